using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Fiddler.Host.Serving.Telemetry;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>
/// Listens to one <see cref="ServingTelemetry"/> instance only (by reference, not by name), so tests running in
/// parallel with their own instances do not see each other's spans and measurements.
/// </summary>
internal sealed class TelemetryCapture : IDisposable
{
    private readonly ActivityListener _activities;
    private readonly MeterListener _meters;

    public ConcurrentQueue<Activity> Spans { get; } = new();
    public ConcurrentQueue<(string Instrument, double Value, IReadOnlyDictionary<string, object?> Tags)> Measurements { get; } = new();

    public TelemetryCapture(ServingTelemetry telemetry)
    {
        _activities = new ActivityListener
        {
            ShouldListenTo = s => ReferenceEquals(s, telemetry.Source),
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = Spans.Enqueue,
        };
        ActivitySource.AddActivityListener(_activities);
        _meters = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (ReferenceEquals(instrument.Meter, telemetry.Meter)) listener.EnableMeasurementEvents(instrument);
            },
        };
        _meters.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _meters.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _meters.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _meters.Start();
    }

    private void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var copy = new Dictionary<string, object?>();
        foreach (var t in tags) copy[t.Key] = t.Value;
        Measurements.Enqueue((instrument.Name, value, copy));
    }

    /// <summary>Polls the observable instruments once.</summary>
    public void Observe() => _meters.RecordObservableInstruments();

    public (double Value, IReadOnlyDictionary<string, object?> Tags)[] Of(string instrument) =>
        [.. Measurements.Where(m => m.Instrument == instrument).Select(m => (m.Value, m.Tags))];

    public Activity Span(string name) => Assert.Single(Spans, s => s.OperationName == name);

    public void Dispose()
    {
        _activities.Dispose();
        _meters.Dispose();
    }
}

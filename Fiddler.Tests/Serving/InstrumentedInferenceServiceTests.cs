using System.Diagnostics;
using Fiddler.Actors.Protocols;
using Fiddler.Host.Serving;
using Fiddler.Host.Serving.Telemetry;
using Fiddler.Kernels.Generation;
using Xunit;
using Tags = Fiddler.Host.Serving.Telemetry.ServingTelemetry.Tags;

namespace Fiddler.Tests.Serving;

/// <summary>The telemetry decorator over <see cref="ScriptedInferenceService"/>: span tree, tags and metrics.</summary>
public sealed class InstrumentedInferenceServiceTests : IDisposable
{
    private static readonly TimeSpan Tolerance = TimeSpan.FromMilliseconds(50);

    private readonly ScriptedInferenceService _engine = new() { PrefillDelay = TimeSpan.FromMilliseconds(30), TokenDelay = TimeSpan.FromMilliseconds(10) };
    private readonly ServingTelemetry _telemetry;
    private readonly TelemetryCapture _capture;
    private readonly InstrumentedInferenceService _service;

    public InstrumentedInferenceServiceTests()
    {
        _telemetry = new ServingTelemetry(() => _engine.QueueDepth);
        _capture = new TelemetryCapture(_telemetry);
        _service = new InstrumentedInferenceService(_engine, _telemetry);
        ServingTelemetry.CurrentFrontend = "test";
    }

    public void Dispose()
    {
        _capture.Dispose();
        _telemetry.Dispose();
    }

    private static CompletionJob Job(int maxTokens, string id = "req-1") =>
        new([1, 2, 3], new GenerationOptions { MaxNewTokens = maxTokens }, id);

    private async Task<List<CompletionEvent>> Run(CompletionJob job)
    {
        using var ticket = _service.Admit();
        var events = new List<CompletionEvent>();
        await foreach (var e in _service.RunAsync(ticket, job, CancellationToken.None)) events.Add(e);
        return events;
    }

    [Fact]
    public async Task RunAsync_Completed_RequestSpanWithQueuePrefillDecodeChildren()
    {
        var completed = (CompletedEvent)(await Run(Job(3))).Last();

        var request = _capture.Span("fiddler.request");
        var queue = _capture.Span("fiddler.queue");
        var prefill = _capture.Span("fiddler.prefill");
        var decode = _capture.Span("fiddler.decode");
        foreach (var child in new[] { queue, prefill, decode })
        {
            Assert.Equal(request.TraceId, child.TraceId);
            Assert.Equal(request.SpanId, child.ParentSpanId);
        }
        Assert.Equal(completed.Queued, queue.Duration);
        Assert.Equal(completed.Prefill, prefill.Duration);
        Assert.Equal(completed.Decode, decode.Duration);
        Assert.Equal(queue.StartTimeUtc + queue.Duration, prefill.StartTimeUtc);
        Assert.Equal(prefill.StartTimeUtc + prefill.Duration, decode.StartTimeUtc);
        Assert.True(request.StartTimeUtc <= queue.StartTimeUtc);
        Assert.True(decode.StartTimeUtc + decode.Duration <= request.StartTimeUtc + request.Duration + Tolerance);

        Assert.Equal("req-1", request.GetTagItem(Tags.RequestId));
        Assert.Equal("scripted-moe", request.GetTagItem(Tags.Model));
        Assert.Equal("test", request.GetTagItem(Tags.Frontend));
        Assert.Equal(3, request.GetTagItem(Tags.PromptTokens));
        Assert.Equal(3, request.GetTagItem(Tags.CompletionTokens));
        Assert.Equal(new[] { "length" }, request.GetTagItem(Tags.FinishReasons));
        Assert.Equal("ok", request.GetTagItem(Tags.Outcome));
        Assert.Equal(ActivityStatusCode.Unset, request.Status);
    }

    [Fact]
    public async Task RunAsync_EmptyPhases_SpansStayEmptyInsteadOfRunningToNow()
    {
        var engine = new ScriptedInferenceService
        {
            TokenDelay = TimeSpan.FromMilliseconds(20),
            AlterCompletion = c => c with { Queued = TimeSpan.Zero, Prefill = TimeSpan.Zero },
        };
        var service = new InstrumentedInferenceService(engine, _telemetry);
        using var ticket = service.Admit();
        await foreach (var _ in service.RunAsync(ticket, Job(3), CancellationToken.None)) { }

        Assert.True(_capture.Span("fiddler.queue").Duration < TimeSpan.FromMilliseconds(1));
        Assert.True(_capture.Span("fiddler.prefill").Duration < TimeSpan.FromMilliseconds(1));
        // Two 20 ms token delays; Task.Delay's timer may end a little before 20 ms by the Stopwatch clock.
        var decode = _capture.Span("fiddler.decode").Duration;
        Assert.True(decode >= TimeSpan.FromMilliseconds(35), $"decode span {decode.TotalMilliseconds} ms");
    }

    [Fact]
    public async Task RunAsync_Completed_RecordsRequestMetrics()
    {
        await Run(Job(3));

        var (count, tags) = Assert.Single(_capture.Of("fiddler.requests"));
        Assert.Equal(1, count);
        Assert.Equal("test", tags[Tags.Frontend]);
        Assert.Equal("ok", tags[Tags.Outcome]);
        Assert.Equal(3, _capture.Of("fiddler.tokens.generated").Sum(m => m.Value));
        Assert.InRange(Assert.Single(_capture.Of("fiddler.time_to_first_token")).Value, 0.025, 10);
        Assert.InRange(Assert.Single(_capture.Of("fiddler.request.duration")).Value, 0.045, 10);
        // 2 tokens over ≥ 20 ms: at most 1000/s; at least well above 0 (a loaded CI host once stalled the fake engine ~1 s).
        Assert.InRange(Assert.Single(_capture.Of("fiddler.decode.rate")).Value, 0.05, 1000);
    }

    [Fact]
    public void Admit_QueueFull_CountsQueueFullOutcome()
    {
        var full = new InstrumentedInferenceService(new ScriptedInferenceService { Capacity = 0 }, _telemetry);

        Assert.Throws<QueueFullException>(() => full.Admit());

        Assert.Equal("queue_full", Assert.Single(_capture.Of("fiddler.requests")).Tags[Tags.Outcome]);
    }

    [Fact]
    public async Task RunAsync_EngineRejectsJob_CountsInvalidAndRethrows()
    {
        await Assert.ThrowsAsync<RequestException>(() => Run(Job(1000)));

        Assert.Equal("invalid", Assert.Single(_capture.Of("fiddler.requests")).Tags[Tags.Outcome]);
        var request = _capture.Span("fiddler.request");
        Assert.Equal("invalid", request.GetTagItem(Tags.Outcome));
        Assert.DoesNotContain(_capture.Spans, s => s.OperationName == "fiddler.decode");
    }

    [Fact]
    public async Task RunAsync_ConsumerStopsEarly_CountsCancelled()
    {
        using var ticket = _service.Admit();
        await foreach (var e in _service.RunAsync(ticket, Job(50), CancellationToken.None))
        {
            Assert.IsType<TokenEvent>(e);
            break;
        }

        Assert.Equal("cancelled", Assert.Single(_capture.Of("fiddler.requests")).Tags[Tags.Outcome]);
        Assert.Equal("cancelled", _capture.Span("fiddler.request").GetTagItem(Tags.Outcome));
    }

    [Fact]
    public async Task RunAsync_TokenCancelled_EngineFinishesCancelledAndOutcomeIsCancelled()
    {
        using var cts = new CancellationTokenSource();
        using var ticket = _service.Admit();
        var events = new List<CompletionEvent>();
        await foreach (var e in _service.RunAsync(ticket, Job(50), cts.Token))
        {
            events.Add(e);
            cts.Cancel();
        }

        Assert.Equal(FinishReason.Cancelled, Assert.IsType<CompletedEvent>(events.Last()).Finish);
        Assert.Equal("cancelled", Assert.Single(_capture.Of("fiddler.requests")).Tags[Tags.Outcome]);
    }

    [Fact]
    public void ObservableInstruments_ReportQueueDepthAndEngineStats()
    {
        var stats = new EngineStatsSnapshot(10, 80, 60, 20, 5, 5 * 1024, TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(3));
        using var telemetry = new ServingTelemetry(() => 7, () => stats);
        using var capture = new TelemetryCapture(telemetry);

        capture.Observe();

        Assert.Equal(7, Assert.Single(capture.Of("fiddler.queue.depth")).Value);
        Assert.Equal(0.75, Assert.Single(capture.Of("fiddler.engine.expert.gpu_hit_rate")).Value);
        Assert.Equal(80, Assert.Single(capture.Of("fiddler.engine.expert.routed")).Value);
        Assert.Equal(20, Assert.Single(capture.Of("fiddler.engine.expert.cpu")).Value);
        Assert.Equal(2, Assert.Single(capture.Of("fiddler.engine.expert.cpu_time")).Value);
        Assert.Equal(3, Assert.Single(capture.Of("fiddler.engine.layer.time")).Value);
        Assert.Equal(5, Assert.Single(capture.Of("fiddler.engine.expert.transfers")).Value);
        Assert.Equal(5 * 1024, Assert.Single(capture.Of("fiddler.engine.pcie.transferred")).Value);
        Assert.Equal(10, Assert.Single(capture.Of("fiddler.engine.layer.steps")).Value);
    }

    [Fact]
    public void ObservableInstruments_NoSnapshotYet_ReportNothing()
    {
        using var telemetry = new ServingTelemetry(engineStats: () => null);
        using var capture = new TelemetryCapture(telemetry);

        capture.Observe();

        Assert.Empty(capture.Measurements);
    }

    [Fact]
    public void TokenText_ThroughTheInterface_ForwardedToTheEngine()
    {
        // The interface's default body answers "": a decorator that did not forward would blank logprob tokens.
        IInferenceService service = _service;

        Assert.Equal("tok42", service.TokenText(42));
    }

    [Fact]
    public void FromLayers_SumsLayersIncludingTransferredBytes()
    {
        LayerStats[] layers = [new(0, 4, 8, 6, 2, 1, 1.5, 10) { TransferredBytes = 1000 }, new(1, 4, 8, 2, 6, 3, 2.5, 20) { TransferredBytes = 2500 }];

        var s = EngineStatsSnapshot.FromLayers(layers);

        Assert.Equal(new EngineStatsSnapshot(8, 16, 8, 8, 4, 3500, TimeSpan.FromMilliseconds(4), TimeSpan.FromMilliseconds(30)), s);
        Assert.Equal(0.5, s.GpuHitRate);
    }

    [Theory]
    [InlineData("none", TelemetryExporter.None)]
    [InlineData("Console", TelemetryExporter.Console)]
    [InlineData(" otlp ", TelemetryExporter.Otlp)]
    public void ParseExporter_KnownValue_Parses(string value, TelemetryExporter expected) =>
        Assert.Equal(expected, TelemetryOptions.ParseExporter(value));

    [Fact]
    public void ParseExporter_UnknownValue_NamesTheFlag() =>
        Assert.Contains("--otel", Assert.Throws<ArgumentException>(() => TelemetryOptions.ParseExporter("jaeger")).Message);
}

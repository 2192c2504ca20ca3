using Fiddler.Actors.Protocols;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>
/// Asks the engine for its layer statistics every <c>interval</c> and keeps the latest sum, so that a metrics scrape
/// reads a field instead of asking every layer actor (the engine instruments call their callback once each per
/// collection). A failed ask keeps the previous snapshot; the loop ends on <see cref="DisposeAsync"/>.
/// </summary>
public sealed class EngineStatsPoller : IAsyncDisposable
{
    private readonly Func<Task<LayerStats[]>> _layerStats;
    private readonly TimeSpan _interval;
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;
    private EngineStatsSnapshot? _latest;

    /// <param name="layerStats">Usually <c>FiddlerRuntime.LayerStatsAsync</c>.</param>
    public EngineStatsPoller(Func<Task<LayerStats[]>> layerStats, TimeSpan? interval = null)
    {
        _layerStats = layerStats;
        _interval = interval ?? TimeSpan.FromSeconds(2);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(_interval, TimeSpan.Zero);
    }

    /// <summary>The last snapshot taken, or null before the first one.</summary>
    public EngineStatsSnapshot? Latest => Volatile.Read(ref _latest);

    /// <summary>Takes a snapshot now, then one every interval until disposed.</summary>
    public void Start() => _loop ??= RunAsync(_stop.Token);

    /// <summary>One snapshot now (also what the loop does each interval).</summary>
    public async Task PollAsync()
    {
        try
        {
            Volatile.Write(ref _latest, EngineStatsSnapshot.FromLayers(await _layerStats()));
        }
        catch (Exception e) when (e is not OperationCanceledException || !_stop.IsCancellationRequested)
        {
            // A router busy past the ask timeout, or shutting down: the next tick tries again.
        }
    }

    private async Task RunAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(_interval);
        try
        {
            do await PollAsync();
            while (await timer.WaitForNextTickAsync(stop));
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_loop is not null) await _loop;
        _stop.Dispose();
    }
}

using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Sampling;

namespace Fiddler.Host.Serving;

/// <summary>
/// The engine's health as <see cref="InferenceService"/> reports it: a real one-token greedy generation at start-up and
/// again after any engine failure, so "ok" means the engine generated, not merely that the process is up. Once
/// stopping, no probe result overwrites that state.
/// </summary>
internal sealed class EngineHealth
{
    private readonly EngineCall _engine;
    private readonly int _probeToken;
    // The service's: the probe is cancelled with the generations it runs beside, and the service disposes it.
    private readonly CancellationTokenSource _abort;
    private readonly object _healthGate = new();
    private HealthReport _health = new(false, "starting", "the start-up probe has not run yet");
    private Task? _probe;

    public EngineHealth(EngineCall engine, int probeToken, CancellationTokenSource abort)
    {
        _engine = engine;
        _probeToken = probeToken;
        _abort = abort;
    }

    public HealthReport Report
    {
        get { lock (_healthGate) return _health; }
    }

    /// <summary>The start-up probe, started on the first call (or the re-probe already under way).</summary>
    public Task StartProbe()
    {
        lock (_healthGate) return _probe ??= ProbeAsync();
    }

    // DisposeAsync waits for it, so no probe still uses the abort source once the service disposes it.
    public Task? LastProbe
    {
        get { lock (_healthGate) return _probe; }
    }

    public void Stopping()
    {
        lock (_healthGate) _health = new HealthReport(false, "stopping", "the server is shutting down");
    }

    public void EngineFailed(Exception e)
    {
        lock (_healthGate)
        {
            if (_health.Status == "stopping") return;
            _health = new HealthReport(false, "unhealthy", $"engine failure: {e.Message}; re-probing");
            if (_probe is { IsCompleted: false }) return;
            _probe = ProbeAsync();
        }
    }

    /// <summary>A real one-token greedy generation through the runtime; ready only if it gives one token.</summary>
    private async Task ProbeAsync()
    {
        await Task.Yield();
        HealthReport report;
        try
        {
            int n = 0;
            var options = new GenerationOptions { MaxNewTokens = 1, Sampling = SamplingOptions.Greedy, StopOnEos = false };
            await foreach (var token in _engine([_probeToken], options, _abort.Token))
                if (token.Id >= 0) n++;
            report = n == 1 ? new HealthReport(true, "ok", null)
                : new HealthReport(false, "unhealthy", $"the probe generation gave {n} tokens instead of 1");
        }
        catch (Exception e)
        {
            report = new HealthReport(false, "unhealthy", $"the probe generation failed: {e.Message}");
        }
        lock (_healthGate)
            if (_health.Status != "stopping") _health = report;
    }
}

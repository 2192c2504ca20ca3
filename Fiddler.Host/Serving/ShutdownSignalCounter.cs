namespace Fiddler.Host.Serving;

/// <summary>
/// What a termination signal (SIGINT/SIGTERM) to <c>fiddler serve</c> means: the first starts the drain, a later one
/// skips what is left of the grace period, and one within <see cref="Echo"/> of the first is the same request arriving
/// twice. That happens whenever a signal goes to the whole process group or cgroup (systemd's default
/// KillMode=control-group, <c>kill -TERM -PGID</c>) under <see cref="Cli.CudaBootstrap"/>: the child gets it directly
/// and again from the parent, which forwards SIGTERM; counting both would cut every drain short. Thread-safe.
/// </summary>
public sealed class ShutdownSignalCounter(Func<TimeSpan> clock)
{
    /// <summary>A second signal this soon after the first is taken for the same one.</summary>
    public static readonly TimeSpan Echo = TimeSpan.FromSeconds(1);

    private readonly Lock _gate = new();
    private TimeSpan? _first;

    public enum Step { Drain, SkipGrace, Ignored }

    public Step Next()
    {
        lock (_gate)
        {
            var now = clock();
            if (_first is not { } first)
            {
                _first = now;
                return Step.Drain;
            }
            return now - first < Echo ? Step.Ignored : Step.SkipGrace;
        }
    }
}

using Akka.Configuration;
using Akka.Dispatch;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Actors.Runtime;

/// <summary>
/// An Akka.NET executor with one dedicated thread that spins between mailbox runs (<see cref="SpinningThread"/>)
/// instead of blocking: for the actors on a decode step's critical path (the router and the CPU worker pool), whose
/// next message comes once per layer. A pinned dispatcher's thread blocks when idle, and waking it cost ~50-130 µs per
/// layer on the H100 host while every core is busy. Configured in akka.hocon:
/// <c>executor = "Fiddler.Actors.Runtime.SpinningThreadExecutorConfigurator, Fiddler.Actors"</c> with
/// <c>spinning-thread-executor.spin-time</c> and <c>spinning-thread-executor.min-processors</c> (a host with fewer
/// logical processors gets no spin: there the spinning core is taken from the work itself). One thread per dispatcher,
/// which runs the mailboxes of every actor on it one after another.
/// </summary>
public sealed class SpinningThreadExecutorConfigurator(Config config, IDispatcherPrerequisites prerequisites)
    : ExecutorServiceConfigurator(config, prerequisites)
{
    public override ExecutorService Produce(string id)
    {
        var spin = Config.GetTimeSpan("spinning-thread-executor.spin-time", TimeSpan.FromMilliseconds(20));
        if (spin < TimeSpan.Zero || spin > TimeSpan.FromSeconds(1))
            throw new ConfigurationException($"{id}: spinning-thread-executor.spin-time must be 0..1 s, got {spin}");
        int minProcessors = Config.GetInt("spinning-thread-executor.min-processors", 8);
        if (minProcessors < 1)
            throw new ConfigurationException($"{id}: spinning-thread-executor.min-processors must be at least 1, got {minProcessors}");
        return new SpinningThreadExecutor(id, EffectiveSpin(spin, minProcessors, Environment.ProcessorCount));
    }

    /// <summary>
    /// The spin a host gets: none below <paramref name="minProcessors"/> logical processors. On a small host the decode
    /// step's own threads (the CPU workers, the thread driving the device) already take every core, and two actor
    /// threads spinning beside them slow the step and starve everything else in the process (timers, the network).
    /// </summary>
    public static TimeSpan EffectiveSpin(TimeSpan spin, int minProcessors, int processors) =>
        processors >= minProcessors ? spin : TimeSpan.Zero;
}

/// <summary>Runs the dispatcher's mailboxes one after another on one spinning thread.</summary>
internal sealed class SpinningThreadExecutor(string id, TimeSpan spin) : ExecutorService(id)
{
    private readonly SpinningThread _thread = new(spin, $"fiddler-{id.Split('.')[^1]}");

    // A mailbox run handles its actors' failures itself (supervision); the task only carries what escapes it.
    // After Shutdown, Akka expects a RejectedExecutionException (its dispatcher retries on the replacement executor).
    public override void Execute(IRunnable run)
    {
        try { _thread.Start(run.Run); }
        catch (ObjectDisposedException e) { throw new RejectedExecutionException($"{Id} is shut down", e); }
    }

    public override void Shutdown() => _thread.Dispose();
}

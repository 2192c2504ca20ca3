using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Runtime;

/// <summary>
/// The executor's scheduler, answered by the router actor. Called on the GPU device actor's pinned thread, which may
/// block: it is that actor's own thread and nothing else is queued on it.
/// </summary>
public sealed class ActorScheduler(IActorRef router, TimeSpan timeout) : IExpertScheduler
{
    public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work)
    {
        // Every layer of every token waits here: a reply slot in the message instead of Ask's temporary actor, and
        // completed inline so this thread wakes straight from the router's thread.
        var reply = new TaskCompletionSource<LayerRoutes>();
        router.Tell(new DecideLayer(layer, work, reply));
        try
        {
            return reply.Task.WaitAsync(timeout).GetAwaiter().GetResult().Routes;
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"the router actor did not decide layer {layer} within {timeout.TotalSeconds:0} s");
        }
    }

    /// <summary>
    /// Whether the layers observed now count in the layer actors' statistics. Set by the GPU device actor around a
    /// generation (<see cref="Generate.CountInStats"/>) on its thread, the one every observation comes from: the
    /// router's mailbox then gets them in the order this thread sent them.
    /// </summary>
    public bool CountInStats { get; set; } = true;

    public void Observe(LayerObservation observation) => router.Tell(new LayerObserved(observation, CountInStats));
}

/// <summary>The executor's CPU backend, served by the CPU worker pool actor.</summary>
public sealed class ActorCpuBackend(IActorRef pool, string name, TimeSpan timeout) : ICpuExpertBackend
{
    public string Name => name;

    public void Run(IReadOnlyList<CpuExpertJob> jobs) => Start(jobs, static () => { }).GetAwaiter().GetResult();

    /// <summary>
    /// Sends the jobs to the pool actor, which calls <paramref name="finished"/> before it replies. The reply comes in a
    /// slot of the message, completed on the pool's thread, so this task ends there too (the executor waits for it
    /// while every core is busy: a thread-pool hop could take long).
    /// </summary>
    public async Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished)
    {
        var slot = new TaskCompletionSource<object>();
        using var abandoned = new CancellationTokenSource();
        pool.Tell(new RunCpuExperts(jobs, finished, slot, abandoned.Token));
        object reply;
        try
        {
            reply = await slot.Task.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            abandoned.Cancel(); // the pool skips the jobs if it has not started them yet
            throw new TimeoutException($"the CPU worker pool actor did not run its experts within {timeout.TotalSeconds:0} s");
        }
        if (reply is CpuExpertsFailed f) throw new InvalidOperationException("CPU experts failed", f.Error);
    }
}

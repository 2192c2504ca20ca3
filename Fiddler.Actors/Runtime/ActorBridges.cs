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
    public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work) =>
        router.Ask<LayerRoutes>(new DecideLayer(layer, work), timeout).GetAwaiter().GetResult().Routes;

    public void Observe(LayerObservation observation) => router.Tell(new LayerObserved(observation));
}

/// <summary>The executor's CPU backend, served by the CPU worker pool actor.</summary>
public sealed class ActorCpuBackend(IActorRef pool, string name, TimeSpan timeout) : ICpuExpertBackend
{
    public string Name => name;

    public void Run(IReadOnlyList<CpuExpertJob> jobs)
    {
        var reply = pool.Ask<object>(new RunCpuExperts(jobs), timeout).GetAwaiter().GetResult();
        if (reply is CpuExpertsFailed f) throw new InvalidOperationException("CPU experts failed", f.Error);
    }
}

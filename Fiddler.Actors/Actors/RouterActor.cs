using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Actors;

/// <summary>
/// Owns the routing decision (any <see cref="IExpertScheduler"/>, normally the latency-model router) and the layer
/// actors: answers <see cref="DecideLayer"/>, accounts <see cref="LayerObserved"/> and forwards it to "layer-NN".
/// </summary>
public sealed class RouterActor : ReceiveActor
{
    public RouterActor(IExpertScheduler scheduler, int layers)
    {
        var layerActors = Enumerable.Range(0, layers)
            .Select(i => Context.ActorOf(LayerActor.Props(i), $"layer-{i:00}")).ToArray();
        Receive<DecideLayer>(m =>
        {
            if (m.Reply is null)
            {
                Sender.Tell(new LayerRoutes(m.Layer, scheduler.Decide(m.Layer, m.Work)));
                return;
            }
            try { m.Reply.TrySetResult(new LayerRoutes(m.Layer, scheduler.Decide(m.Layer, m.Work))); }
            catch (Exception e) { m.Reply.TrySetException(e); }
        });
        Receive<LayerObserved>(m =>
        {
            scheduler.Observe(m.Observation);
            if (m.Counted) layerActors[m.Observation.Layer].Tell(m);
        });
        Receive<GetLayerStats>(_ => Sender.Tell(layerActors.Select(a => a.Ask<LayerStats>(GetLayerStats.Instance, TimeSpan.FromSeconds(5)).Result).ToArray()));
        Receive<ResetLayerStats>(_ =>
        {
            foreach (var a in layerActors) a.Ask<Akka.Done>(ResetLayerStats.Instance, TimeSpan.FromSeconds(5)).Wait();
            Sender.Tell(Akka.Done.Instance);
        });
    }

    /// <summary>A layer actor only keeps statistics: restart it (fresh counters) rather than stop routing.</summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(maxNrOfRetries: 10, withinTimeRange: TimeSpan.FromMinutes(1), localOnlyDecider: _ => Directive.Restart);

    /// <summary>On its own spinning thread (akka.hocon's router-dispatcher): every layer of every token waits for its answer,
    /// so it must never queue behind other work for a dispatcher thread (measured: 9 % of decode time on the shared
    /// dispatcher) nor wait for a blocked thread to wake.</summary>
    public static Props Props(IExpertScheduler scheduler, int layers) =>
        Akka.Actor.Props.Create(() => new RouterActor(scheduler, layers)).WithDispatcher("fiddler.router-dispatcher");
}

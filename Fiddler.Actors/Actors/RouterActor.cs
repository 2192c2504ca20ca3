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
    /// <summary>How long the router waits for each layer actor's statistics before the query fails.</summary>
    private static readonly TimeSpan StatsTimeout = TimeSpan.FromSeconds(5);

    public RouterActor(IExpertScheduler scheduler, int layers, Func<int, Props>? layerProps)
    {
        layerProps ??= LayerActor.Props;
        var layerActors = Enumerable.Range(0, layers)
            .Select(i => Context.ActorOf(layerProps(i), $"layer-{i:00}")).ToArray();
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
        // Statistics are gathered off the router's thread: every decode layer waits on that thread for its routes, so it
        // never waits for the layer actors' answers itself. A layer that fails to answer fails the query (Status.Failure
        // to the asker), not the router. The asks leave after every LayerObserved forwarded before them, so the answer
        // counts those.
        Receive<GetLayerStats>(_ => Task.WhenAll(layerActors.Select(a => a.Ask<LayerStats>(GetLayerStats.Instance, StatsTimeout)))
            .PipeTo(Sender));
        Receive<ResetLayerStats>(_ => Task.WhenAll(layerActors.Select(a => a.Ask<Akka.Done>(ResetLayerStats.Instance, StatsTimeout)))
            .PipeTo(Sender, success: _ => Akka.Done.Instance));
    }

    /// <summary>A layer actor only keeps statistics: restart it (fresh counters) rather than stop routing.</summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(maxNrOfRetries: 10, withinTimeRange: TimeSpan.FromMinutes(1), localOnlyDecider: _ => Directive.Restart);

    /// <summary>The dispatcher of the router and the CPU worker pool actor: one spinning thread (akka.hocon).</summary>
    public const string LaneDispatcher = "fiddler.lane-dispatcher";

    /// <summary>On the spinning thread it shares with the CPU worker pool actor (akka.hocon's lane-dispatcher): every layer
    /// of every token waits for its answer, so it must never queue behind other work for a dispatcher thread (measured:
    /// 9 % of decode time on the shared default dispatcher) nor wait for a blocked thread to wake. The pool's messages
    /// never hold it up: a layer asks for its routes only once the previous layer's CPU experts have ended.</summary>
    /// <param name="layerProps">The layer actors' props by layer (default <see cref="LayerActor.Props"/>; tests give slow ones).</param>
    public static Props Props(IExpertScheduler scheduler, int layers, Func<int, Props>? layerProps = null) =>
        Akka.Actor.Props.Create(() => new RouterActor(scheduler, layers, layerProps)).WithDispatcher(LaneDispatcher);
}

using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Actors;

/// <summary>One decoder layer's view of the run: how its experts were served (hits, CPU, transfers) and how long it took.</summary>
public sealed class LayerActor : ReceiveActor
{
    private LayerStats _stats;

    public LayerActor(int layer)
    {
        _stats = new LayerStats(layer, 0, 0, 0, 0, 0, 0, 0);
        Receive<LayerObserved>(m =>
        {
            var o = m.Observation;
            _stats = _stats with
            {
                Steps = _stats.Steps + 1,
                Chosen = _stats.Chosen + o.Work.Count,
                Resident = _stats.Resident + o.Work.Count(w => w.Resident),
                Cpu = _stats.Cpu + o.Routes.Count(r => r == ExpertRoute.Cpu),
                Transfers = _stats.Transfers + o.Routes.Count(r => r == ExpertRoute.Transfer),
                Splits = _stats.Splits + o.Routes.Count(r => r.Kind == ExpertRouteKind.Split),
                TransferredBytes = _stats.TransferredBytes + o.TransferredBytes,
                CpuLaneMs = _stats.CpuLaneMs + o.CpuLaneMs,
                LayerMs = _stats.LayerMs + o.LayerMs,
            };
        });
        Receive<GetLayerStats>(_ => Sender.Tell(_stats));
        Receive<ResetLayerStats>(_ =>
        {
            _stats = new LayerStats(layer, 0, 0, 0, 0, 0, 0, 0);
            Sender.Tell(Akka.Done.Instance);
        });
    }

    public static Props Props(int layer) => Akka.Actor.Props.Create(() => new LayerActor(layer));
}

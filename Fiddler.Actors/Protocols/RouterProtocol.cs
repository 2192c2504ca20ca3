using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Protocols;

/// <summary>
/// Asks the router actor where one layer's chosen experts run. The answer goes to <paramref name="Reply"/> when set
/// (in-process: the GPU device actor's thread waits on it without a temporary actor per layer), else to the sender.
/// </summary>
public sealed record DecideLayer(int Layer, IReadOnlyList<ExpertWork> Work, TaskCompletionSource<LayerRoutes>? Reply = null);

/// <summary>The router's answer: one route per work item, same order.</summary>
public sealed record LayerRoutes(int Layer, IReadOnlyList<ExpertRoute> Routes);

/// <summary>What a layer took; the router accounts it and forwards it to that layer's actor when <paramref name="Counted"/>
/// (false: a generation left out of the statistics, see <see cref="Generate.CountInStats"/>).</summary>
public sealed record LayerObserved(LayerObservation Observation, bool Counted = true);

/// <summary>Asks a layer actor for its running statistics.</summary>
public sealed record GetLayerStats
{
    public static GetLayerStats Instance { get; } = new();
}

/// <summary>
/// Starts the layer actors' statistics over (after a start-up warm-up, so that the served totals leave it out).
/// The router answers <see cref="Akka.Done"/> once every layer actor has it: a later <see cref="GetLayerStats"/> sees zeros.
/// </summary>
public sealed record ResetLayerStats
{
    public static ResetLayerStats Instance { get; } = new();
}

/// <summary>One layer's totals since start: steps, experts chosen, resident hits, CPU/transfer counts and time.</summary>
public sealed record LayerStats(int Layer, long Steps, long Chosen, long Resident, long Cpu, long Transfers, double CpuLaneMs, double LayerMs)
{
    /// <summary>Experts divided between the CPU and a transfer.</summary>
    public long Splits { get; init; }
    /// <summary>Weight bytes copied host → GPU (PCIe traffic).</summary>
    public long TransferredBytes { get; init; }
    public double HitRate => Chosen == 0 ? 0 : (double)Resident / Chosen;
}

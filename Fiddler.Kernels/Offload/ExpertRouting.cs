using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Where one expert's tokens are computed in one layer.</summary>
public enum ExpertRouteKind
{
    /// <summary>The expert's weights live on the compute device: compute there.</summary>
    Gpu,
    /// <summary>Compute on the CPU next to the weights; only activations cross PCIe.</summary>
    Cpu,
    /// <summary>Copy the weights to a GPU staging slot, then compute on the GPU.</summary>
    Transfer,
    /// <summary>
    /// Both at once: the CPU computes the first <see cref="ExpertRoute.CpuShare"/> of the intermediate rows while the rest
    /// of the weights stream to the GPU and are computed there; the two partial outputs add up to the expert's
    /// (w2 is linear in the intermediate activations). Balances the CPU lane against the PCIe lane.
    /// </summary>
    Split,
}

/// <summary>A route: where, and for <see cref="ExpertRouteKind.Split"/> the CPU's share of the intermediate rows.</summary>
public readonly record struct ExpertRoute(ExpertRouteKind Kind, double CpuShare = 0)
{
    public static ExpertRoute Gpu { get; } = new(ExpertRouteKind.Gpu);
    public static ExpertRoute Cpu { get; } = new(ExpertRouteKind.Cpu, 1);
    public static ExpertRoute Transfer { get; } = new(ExpertRouteKind.Transfer);

    /// <summary>A split with the CPU computing <paramref name="cpuShare"/> (0 &lt; share &lt; 1) of the intermediate rows.</summary>
    public static ExpertRoute Split(double cpuShare) =>
        cpuShare is > 0 and < 1 ? new(ExpertRouteKind.Split, cpuShare)
            : throw new ArgumentOutOfRangeException(nameof(cpuShare), $"a split's CPU share must be in (0, 1), got {cpuShare}");

    /// <summary>Whether part of the expert runs on the CPU.</summary>
    public bool UsesCpu => Kind is ExpertRouteKind.Cpu or ExpertRouteKind.Split;

    /// <summary>Whether part of the expert's weights are copied to the GPU.</summary>
    public bool UsesTransfer => Kind is ExpertRouteKind.Transfer or ExpertRouteKind.Split;

    /// <summary>
    /// Intermediate rows [0, result) on the CPU for an expert of <paramref name="intermediate"/> rows, rounded to 64
    /// (whole SIMD blocks; 1 for experts under 1024 rows), and at least one block on each side: a split runs on both
    /// lanes, as the router planned and learns from (a share near 0 or 1 of a small expert would otherwise round to a
    /// whole CPU or whole transfer route that the router still accounts as a split). An expert of one row is all CPU.
    /// </summary>
    public int CpuRows(int intermediate)
    {
        if (Kind == ExpertRouteKind.Cpu) return intermediate;
        if (Kind != ExpertRouteKind.Split) return 0;
        int multiple = intermediate >= 1024 ? 64 : 1;
        if (intermediate < 2 * multiple) return intermediate;
        int rows = (int)Math.Round(CpuShare * intermediate / multiple) * multiple;
        return Math.Clamp(rows, multiple, intermediate - multiple);
    }

    public override string ToString() => Kind == ExpertRouteKind.Split ? $"Split({CpuShare:0.###})" : Kind.ToString();
}

/// <summary>One expert's work in one layer: how many tokens chose it, and whether its weights are on the GPU.</summary>
public readonly record struct ExpertWork(int Expert, int Tokens, bool Resident);

/// <summary>What one layer took, for comparing a scheduler's predictions with reality.</summary>
public sealed record LayerObservation(int Layer, IReadOnlyList<ExpertWork> Work, IReadOnlyList<ExpertRoute> Routes,
    double CpuLaneMs, double LayerMs, int CpuTokens, long TransferredBytes)
{
    /// <summary>Whether the scheduler decided this layer's routes (false: every chosen expert was resident, so the executor
    /// ran them on the device without asking; there is no plan of the scheduler's to account it against).</summary>
    public bool Decided { get; init; } = true;

    /// <summary>Where the executor's wall time went (host clock, no device syncs), when measured.</summary>
    public ExecutorTimings? Timings { get; init; }

    /// <summary>The device's side of a gated layer (CUDA events), when measured.</summary>
    public DeviceLaneTimings? Device { get; init; }

    /// <summary>From this layer's CPU lane ending to the next layer's executor, when measured (gated layers on CUDA).</summary>
    public HandoffTimings? Handoff { get; init; }
}

/// <summary>
/// The serial hand-off from a gated layer's CPU lane to the next layer's executor, in ms: on the device, from the lane's
/// release to the next layer's routing being computed (the merge, the next attention, norm and router), and from there
/// to its read-back copies done (<paramref name="ReadbackMs"/>); on the host, from the lane raising its gate to the host
/// holding the next routing (the device parts plus the gate's latency and the host noticing), and from there to the
/// next layer's executor starting (grouping the routing, collecting the lane).
/// </summary>
public readonly record struct HandoffTimings(double DeviceMs, double HostMs, double ToExecutorMs, double ReadbackMs = 0)
{
    public static HandoffTimings operator +(HandoffTimings a, HandoffTimings b) =>
        new(a.DeviceMs + b.DeviceMs, a.HostMs + b.HostMs, a.ToExecutorMs + b.ToExecutorMs, a.ReadbackMs + b.ReadbackMs);
}

/// <summary>
/// A gated layer on the device, in ms: from the device starting the layer's expert work to finishing it (resident
/// experts, streamed experts and their copies), and how long it then sat waiting for the CPU lane (0: the device lane
/// was the critical path; large: the CPU lane was).
/// </summary>
public readonly record struct DeviceLaneTimings(double DeviceLaneMs, double WaitedForCpuMs)
{
    public static DeviceLaneTimings operator +(DeviceLaneTimings a, DeviceLaneTimings b) =>
        new(a.DeviceLaneMs + b.DeviceLaneMs, a.WaitedForCpuMs + b.WaitedForCpuMs);
}

/// <summary>
/// One layer's executor timeline on the host, in ms: deciding routes; until the CPU lane started (the device→host copy
/// of its rows, which waits for the device's queue); queuing the device lane; waiting for the CPU lane after that (with
/// a gated merge on CUDA the host does not wait here: the device does, and the host's wait moves into the next layer's
/// routing, which reads the device's result); bringing the CPU results back and adding every output in.
/// </summary>
public readonly record struct ExecutorTimings(double DecideMs, double CpuStartMs, double DeviceQueueMs, double CpuWaitMs, double MergeMs)
{
    public double Total => DecideMs + CpuStartMs + DeviceQueueMs + CpuWaitMs + MergeMs;

    public static ExecutorTimings operator +(ExecutorTimings a, ExecutorTimings b) =>
        new(a.DecideMs + b.DecideMs, a.CpuStartMs + b.CpuStartMs, a.DeviceQueueMs + b.DeviceQueueMs, a.CpuWaitMs + b.CpuWaitMs, a.MergeMs + b.MergeMs);
}

/// <summary>
/// Decides, per layer, where each chosen expert runs. Implemented by the orchestration (Fiddler.Actors'
/// latency-model router); Kernels only executes what it is told.
/// </summary>
public interface IExpertScheduler
{
    /// <summary>One route per work item, same order. Resident experts must get <see cref="ExpertRoute.Gpu"/>. Not called for a
    /// layer whose chosen experts are all resident (see <see cref="LayerObservation.Decided"/>).</summary>
    IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work);

    void Observe(LayerObservation observation);
}

/// <summary>Which experts' weights live on the compute device; the rest live in (pinned) host memory.</summary>
public sealed class ExpertResidency(bool[][] onGpu, bool pinHostMemory)
{
    public bool PinHostMemory { get; } = pinHostMemory;

    public bool IsResident(int layer, int expert) => onGpu[layer][expert];

    public Device DeviceOf(int layer, int expert, Device compute) => IsResident(layer, expert) ? compute : CPU;

    public int ResidentCount => onGpu.Sum(l => l.Count(x => x));

    /// <summary>Expert (l, e) resident where <paramref name="resident"/>(l, e) is true.</summary>
    public static ExpertResidency Where(int layers, int experts, Func<int, int, bool> resident, bool pinHostMemory = false) =>
        new(Enumerable.Range(0, layers).Select(l => Enumerable.Range(0, experts).Select(e => resident(l, e)).ToArray()).ToArray(), pinHostMemory);
}

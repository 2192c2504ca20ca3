using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Where one expert's tokens are computed in one layer.</summary>
public enum ExpertRoute
{
    /// <summary>The expert's weights live on the compute device: compute there.</summary>
    Gpu,
    /// <summary>Compute on the CPU next to the weights; only activations cross PCIe.</summary>
    Cpu,
    /// <summary>Copy the weights to a GPU staging slot, then compute on the GPU.</summary>
    Transfer,
}

/// <summary>One expert's work in one layer: how many tokens chose it, and whether its weights are on the GPU.</summary>
public readonly record struct ExpertWork(int Expert, int Tokens, bool Resident);

/// <summary>What one layer took, for comparing a scheduler's predictions with reality.</summary>
public sealed record LayerObservation(int Layer, IReadOnlyList<ExpertWork> Work, IReadOnlyList<ExpertRoute> Routes,
    double CpuLaneMs, double LayerMs, int CpuTokens, long TransferredBytes);

/// <summary>
/// Decides, per layer, where each chosen expert runs. Implemented by the orchestration (Fiddler.Actors'
/// latency-model router); Kernels only executes what it is told.
/// </summary>
public interface IExpertScheduler
{
    /// <summary>One route per work item, same order. Resident experts must get <see cref="ExpertRoute.Gpu"/>.</summary>
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

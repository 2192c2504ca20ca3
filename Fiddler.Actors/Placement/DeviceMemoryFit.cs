namespace Fiddler.Actors.Placement;

/// <summary>
/// Whether a placement fits the GPU it is about to be loaded on, checked before loading so that a budget larger than
/// the card (or a model too big for it without a budget) is a clear error instead of an out-of-memory failure minutes
/// into loading. The budget counts what the engine plans (weights, KV cache, staging, activations); libtorch's kernels
/// and its allocator's cache come on top (<see cref="RuntimeSlackBytes"/>), and the CUDA context is already out of the
/// free memory measured after it was created.
/// </summary>
public static class DeviceMemoryFit
{
    /// <summary>
    /// GPU memory the process holds beyond the plan once it has run, besides the CUDA context: kernels loaded on first
    /// use and the caching allocator's unused blocks. Measured on an H100 (2026-11-27): 24.83 GiB in use at a 24 GiB
    /// budget with 0.51 GiB before the model was built, i.e. 0.32 GiB; rounded up.
    /// </summary>
    public const long RuntimeSlackBytes = 512L << 20;

    /// <summary>Bytes a fully GPU-resident model plans: every weight, the KV cache and the activations.</summary>
    public static long AllOnGpuBytes(ModelShape shape, long contextTokens, int sequences) =>
        shape.NonExpertBytes + shape.AllExpertsBytes + shape.KvCacheBytes(contextTokens, sequences) + shape.ActivationReserveBytes(contextTokens, sequences);

    /// <summary>
    /// Throws <see cref="PlacementException"/> when <paramref name="plannedBytes"/> plus the runtime slack exceed
    /// <paramref name="freeBytes"/> on <paramref name="device"/>; the message says what would fit.
    /// <paramref name="budgeted"/>: whether the plan came from a --gpu-budget (else: everything on the GPU).
    /// </summary>
    public static void Check(long plannedBytes, long freeBytes, long totalBytes, string device, bool budgeted)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(plannedBytes);
        if (plannedBytes + RuntimeSlackBytes <= freeBytes) return;
        long room = Math.Max(0, freeBytes - RuntimeSlackBytes);
        string need = $"needs {MemoryBudget.Format1(plannedBytes)} on {device} (+ ~{MemoryBudget.Format1(RuntimeSlackBytes)} for libtorch's " +
                      $"kernels and cache), which has {MemoryBudget.Format1(freeBytes)} free of {MemoryBudget.Format1(totalBytes)}";
        if (room < 1L << 30)
            throw new PlacementException($"the {(budgeted ? "GPU budget" : "whole model on the GPU")} {need}: too little is free for any budget; free GPU memory or use --device cpu");
        throw new PlacementException(budgeted
            ? $"the GPU budget {need}: give --gpu-budget {FloorGiB(room)}GiB or less"
            : $"the whole model on the GPU {need}: give --gpu-budget (at most {FloorGiB(room)}GiB) to keep some experts in host memory");
    }

    private static long FloorGiB(long bytes) => bytes >> 30;
}

namespace Fiddler.Actors.Placement;

/// <summary>
/// Whether a placement fits the GPU it is about to be loaded on, checked before loading so that a budget larger than
/// the card (or a model too big for it without a budget) is a clear error instead of an out-of-memory failure minutes
/// into loading. The plan already holds libtorch's workspaces, kernels and cache (<see cref="ModelShape.RuntimeReserveBytes"/>),
/// and the CUDA context is already out of the free memory measured after it was created; <see cref="MarginBytes"/> is
/// what runs were seen to hold beyond that.
/// </summary>
public static class DeviceMemoryFit
{
    /// <summary>
    /// Room kept free beyond the plan: on the H100 host (2026-11-27) bench's process stayed within budget + context,
    /// except when it also ran the actor runtime's rounds (0.25 GiB over).
    /// </summary>
    public const long MarginBytes = 256L << 20;

    /// <summary>Bytes a fully GPU-resident model plans: every weight, the KV cache and the activations.</summary>
    public static long AllOnGpuBytes(ModelShape shape, long contextTokens, int sequences) =>
        shape.NonExpertBytes + shape.AllExpertsBytes + shape.KvCacheBytes(contextTokens, sequences) + shape.ActivationReserveBytes(contextTokens, sequences);

    /// <summary>
    /// Throws <see cref="PlacementException"/> when <paramref name="plannedBytes"/> plus the margin exceed
    /// <paramref name="freeBytes"/> on <paramref name="device"/>; the message says what would fit.
    /// <paramref name="budgeted"/>: whether the plan came from a --gpu-budget (else: everything on the GPU).
    /// </summary>
    public static void Check(long plannedBytes, long freeBytes, long totalBytes, string device, bool budgeted)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(plannedBytes);
        if (plannedBytes + MarginBytes <= freeBytes) return;
        long room = Math.Max(0, freeBytes - MarginBytes);
        string need = $"needs {MemoryBudget.Format1(plannedBytes)} on {device} (+ a {MemoryBudget.Format(MarginBytes)} margin), " +
                      $"which has {MemoryBudget.Format1(freeBytes)} free of {MemoryBudget.Format1(totalBytes)}";
        if (room < 1L << 30)
            throw new PlacementException($"the {(budgeted ? "GPU budget" : "whole model on the GPU")} {need}: too little is free for any budget; free GPU memory or use --device cpu");
        throw new PlacementException(budgeted
            ? $"the GPU budget {need}: give --gpu-budget {FloorGiB(room)}GiB or less"
            : $"the whole model on the GPU {need}: give --gpu-budget (at most {FloorGiB(room)}GiB) to keep some experts in host memory");
    }

    /// <summary>
    /// The most positions, up to <paramref name="maxPositions"/>, whose KV cache (one sequence) and one prompt's
    /// activations of that length fit <paramref name="freeBytes"/> with the margin; 0 when not even one does. For a model
    /// loaded whole onto the GPU: a request's cache is allocated when it starts, so a served context above this would
    /// fail on a CUDA allocation instead of being refused up front.
    /// </summary>
    public static int ContextThatFits(ModelShape shape, long freeBytes, int maxPositions)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPositions, 1);
        long Need(long tokens) => shape.KvCacheBytes(tokens) + shape.ActivationReserveBytes(tokens) + MarginBytes;
        if (Need(1) > freeBytes) return 0;
        int lo = 1, hi = maxPositions; // Need grows with tokens: the last that fits, by bisection
        while (lo < hi)
        {
            int mid = lo + (hi - lo + 1) / 2;
            if (Need(mid) <= freeBytes) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }

    private static long FloorGiB(long bytes) => bytes >> 30;
}

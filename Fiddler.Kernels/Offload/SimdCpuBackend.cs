using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// CPU experts on the C# SIMD kernel (<see cref="CpuExpertKernel"/>), all of a layer's experts in one parallel region
/// of the dedicated worker pool. Reads the weights in place (pinned host memory), fp32 accumulation.
/// </summary>
/// <param name="lane">Where <see cref="Start"/> runs the jobs: a dedicated spinning thread (null: the thread pool).</param>
public sealed unsafe class SimdCpuBackend(CpuWorkerPool pool, SpinningThread? lane = null) : ICpuExpertBackend
{
    public string Name => $"simd-{CpuExpertKernel.BestIsa.ToString().ToLowerInvariant()}";

    public Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished) => CpuLanes.Start(lane, this, jobs, finished);

    public void Run(IReadOnlyList<CpuExpertJob> jobs)
    {
        var kernelJobs = new ExpertJob[jobs.Count];
        for (int i = 0; i < jobs.Count; i++)
        {
            var (expert, x, y) = (jobs[i].Expert, jobs[i].X, jobs[i].Y);
            var w1 = expert.Gate.Weight;
            int intermediate = (int)w1.shape[0];
            int rows = jobs[i].Rows ?? intermediate;
            if (rows < 1 || rows > intermediate) throw new ArgumentException($"CPU job {i}: rows {rows} outside 1..{intermediate}");
            Check(i, x, y, w1, expert.Up.Weight, expert.Down.Weight);
            var weights = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(expert.Up.Weight),
                (void*)TensorMemory.DataPtr(expert.Down.Weight), (int)w1.shape[1], rows, TypeOf(w1.dtype), w2Stride: intermediate);
            kernelJobs[i] = new ExpertJob(weights, (float*)TensorMemory.DataPtr(x), (float*)TensorMemory.DataPtr(y), (int)x.shape[0]);
        }
        CpuExpertKernel.SwiGluMany(pool, kernelJobs);
    }

    /// <summary>
    /// The kernel reads and writes raw memory: X [n, H] and Y [≥ n, H] must be contiguous fp32 on the CPU, the weights
    /// contiguous on the CPU ([I, H], [I, H], [H, I]). Anything else would read or write outside the tensors (a strided X
    /// gave 118 % error in an audit), so it is refused, not computed.
    /// </summary>
    private static void Check(int job, Tensor x, Tensor y, Tensor w1, Tensor w3, Tensor w2)
    {
        static bool Host(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();
        long hidden = w1.shape[1];
        if (!Host(x) || x.dtype != ScalarType.Float32 || x.dim() != 2 || x.shape[1] != hidden)
            throw new ArgumentException($"CPU job {job}: X must be contiguous float32 [n, {hidden}] on the CPU, got {x.dtype} [{string.Join(", ", x.shape)}] on {x.device}{(x.is_contiguous() ? "" : ", strided")}");
        if (!Host(y) || y.dtype != ScalarType.Float32 || y.dim() != 2 || y.shape[1] != hidden || y.shape[0] < x.shape[0])
            throw new ArgumentException($"CPU job {job}: Y must be contiguous float32 [≥ {x.shape[0]}, {hidden}] on the CPU, got {y.dtype} [{string.Join(", ", y.shape)}] on {y.device}{(y.is_contiguous() ? "" : ", strided")}");
        if (!Host(w1) || !Host(w3) || !Host(w2) || w3.dtype != w1.dtype || w2.dtype != w1.dtype
            || !w3.shape.SequenceEqual(w1.shape) || w2.shape[0] != hidden || w2.shape[1] != w1.shape[0])
            throw new ArgumentException($"CPU job {job}: the expert's weights must be contiguous host tensors of one dtype, [I, H], [I, H] and [H, I]");
    }

    private static WeightType TypeOf(ScalarType t) => t switch
    {
        ScalarType.BFloat16 => WeightType.BF16,
        ScalarType.Float16 => WeightType.F16,
        ScalarType.Float32 => WeightType.F32,
        _ => throw new NotSupportedException($"CPU expert kernel: weights of {t}"),
    };
}

/// <summary>
/// Per job, the SIMD kernel or libtorch's CPU linear, whichever the latency models predict faster at that token count
/// (the kernel is memory-bound and wins small batches; oneDNN/AMX wins large ones).
/// </summary>
/// <param name="lane">Where <see cref="Start"/> runs the jobs: a dedicated spinning thread (null: the thread pool).</param>
public sealed class SplitCpuBackend(ICpuExpertBackend small, ICpuExpertBackend large, Func<int, bool> preferLarge,
    SpinningThread? lane = null) : ICpuExpertBackend
{
    public string Name => $"{small.Name}+{large.Name}";

    public Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished) => CpuLanes.Start(lane, this, jobs, finished);

    public void Run(IReadOnlyList<CpuExpertJob> jobs)
    {
        var useLarge = jobs.Where(j => preferLarge((int)j.X.shape[0])).ToList();
        var useSmall = jobs.Where(j => !preferLarge((int)j.X.shape[0])).ToList();
        // Large first: the small backend's workers spin 2 ms after their region (to catch the next layer), which would
        // take cores from libtorch's team. (libgomp's threads may spin after theirs too; the order was not measured
        // on its own.)
        if (useLarge.Count > 0) large.Run(useLarge);
        if (useSmall.Count > 0) small.Run(useSmall);
    }
}

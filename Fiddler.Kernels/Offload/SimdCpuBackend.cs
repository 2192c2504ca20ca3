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
            long[] w1Shape = w1.Dims();
            int intermediate = (int)w1Shape[0], hidden = (int)w1Shape[1];
            int rows = jobs[i].Rows ?? intermediate;
            if (rows < 1 || rows > intermediate) throw new ArgumentException($"CPU job {i}: rows {rows} outside 1..{intermediate}");
            int tokens = Check(i, x, y, hidden);
            if (!_checkedExperts.TryGetValue(expert, out _)) CheckWeights(i, expert); // weights never change: once per expert
            var weights = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(expert.Up.Weight),
                (void*)TensorMemory.DataPtr(expert.Down.Weight), hidden, rows, TypeOf(w1.dtype), w2Stride: intermediate);
            kernelJobs[i] = new ExpertJob(weights, (float*)TensorMemory.DataPtr(x), (float*)TensorMemory.DataPtr(y), tokens);
        }
        CpuExpertKernel.SwiGluMany(pool, kernelJobs);
    }

    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<Modules.MixtralBlockSparseTop2MLP, object> _checkedExperts = [];

    /// <summary>
    /// The kernel reads and writes raw memory: X [n, H] and Y [≥ n, H] must be contiguous fp32 on the CPU. Anything else
    /// would read or write outside the tensors (a strided X gave 118 % error in an audit), so it is refused, not computed.
    /// Runs per job per layer: each shape is read once. Returns X's rows (the job's tokens).
    /// </summary>
    private static int Check(int job, Tensor x, Tensor y, long hidden)
    {
        long[] xs = x.Dims(), ys = y.Dims();
        if (xs.Length != 2 || xs[1] != hidden || x.dtype != ScalarType.Float32 || !Host(x))
            throw new ArgumentException($"CPU job {job}: X must be contiguous float32 [n, {hidden}] on the CPU, got {x.dtype} [{string.Join(", ", xs)}] on {x.device}{(x.is_contiguous() ? "" : ", strided")}");
        if (ys.Length != 2 || ys[1] != hidden || ys[0] < xs[0] || y.dtype != ScalarType.Float32 || !Host(y))
            throw new ArgumentException($"CPU job {job}: Y must be contiguous float32 [≥ {xs[0]}, {hidden}] on the CPU, got {y.dtype} [{string.Join(", ", ys)}] on {y.device}{(y.is_contiguous() ? "" : ", strided")}");
        return (int)xs[0];
    }

    /// <summary>The expert's weights must be contiguous host tensors of one dtype, [I, H], [I, H] and [H, I].</summary>
    private void CheckWeights(int job, Modules.MixtralBlockSparseTop2MLP expert)
    {
        Tensor w1 = expert.Gate.Weight, w3 = expert.Up.Weight, w2 = expert.Down.Weight;
        if (!Host(w1) || !Host(w3) || !Host(w2) || w3.dtype != w1.dtype || w2.dtype != w1.dtype
            || !w3.Dims().SequenceEqual(w1.Dims()) || w2.size(0) != w1.size(1) || w2.size(1) != w1.size(0))
            throw new ArgumentException($"CPU job {job}: the expert's weights must be contiguous host tensors of one dtype, [I, H], [I, H] and [H, I]");
        _checkedExperts.AddOrUpdate(expert, expert);
    }

    /// <summary>Contiguous memory on the host: what the kernel's raw pointers may read or write.</summary>
    private static bool Host(Tensor t) => t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous();

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
        var useLarge = jobs.Where(j => preferLarge((int)j.X.size(0))).ToList();
        var useSmall = jobs.Where(j => !preferLarge((int)j.X.size(0))).ToList();
        // Large first: the small backend's workers spin 2 ms after their region (to catch the next layer), which would
        // take cores from libtorch's team. (libgomp's threads may spin after theirs too; the order was not measured
        // on its own.)
        if (useLarge.Count > 0) large.Run(useLarge);
        if (useSmall.Count > 0) small.Run(useSmall);
    }
}

using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// One CPU expert job: x [n, H] and y [n, H], float32, contiguous, in host memory; weights in the expert. With
/// <paramref name="Rows"/> set, only intermediate rows [0, Rows) (w1/w3 rows, w2 columns): the CPU half of a split.
/// </summary>
public sealed record CpuExpertJob(MixtralBlockSparseTop2MLP Expert, Tensor X, Tensor Y, int? Rows = null);

/// <summary>Computes a layer's CPU experts (all of them in one call, so an implementation can use one parallel region).</summary>
public interface ICpuExpertBackend
{
    string Name { get; }

    void Run(IReadOnlyList<CpuExpertJob> jobs);

    /// <summary>
    /// Starts the jobs and returns at once. <paramref name="finished"/> is called on the thread that ran them the moment
    /// they are done (or failed), before the task completes: a gated merge releases the GPU from there, so nothing that
    /// follows (a reply message, a task continuation) delays it. By default the jobs run on the thread pool.
    /// </summary>
    Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished) => CpuLanes.Start(null, this, jobs, finished);
}

/// <summary>Starting a backend's jobs in the background, on a <see cref="SpinningThread"/> or the thread pool.</summary>
internal static class CpuLanes
{
    public static Task Start(SpinningThread? lane, ICpuExpertBackend backend, IReadOnlyList<CpuExpertJob> jobs, Action finished)
    {
        void Body()
        {
            try { backend.Run(jobs); }
            finally { finished(); }
        }
        return lane is not null ? lane.Start(Body) : Task.Run(Body);
    }
}

/// <summary>
/// CPU experts through libtorch's CPU linear (oneDNN; AMX on CPUs that have it): the seed's way, and the better one
/// for large token batches. Activations are cast to the weights' dtype, as HF does.
/// </summary>
/// <param name="threads">Intra-op threads for the jobs, set on the thread that runs them (OpenMP keeps the count per
/// calling thread) — libtorch also records it process-wide, for threads that start parallel work later; 0 leaves
/// libtorch's setting (every core by default).</param>
public sealed class TorchCpuBackend(int threads = 0) : ICpuExpertBackend
{
    public string Name => "torch";

    public int Threads { get; } = threads >= 0 ? threads : throw new ArgumentOutOfRangeException(nameof(threads), threads, "must be ≥ 0");

    public void Run(IReadOnlyList<CpuExpertJob> jobs)
    {
        if (Threads > 0 && get_num_threads() != Threads) set_num_threads(Threads);
        // Runs on a worker thread: its own dispose scope (TorchSharp scopes are per thread).
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var job in jobs)
        {
            var e = job.Expert;
            var (w1, w3, w2) = (e.Gate.Weight, e.Up.Weight, e.Down.Weight);
            if (job.Rows is int k) (w1, w3, w2) = (w1.narrow(0, 0, k), w3.narrow(0, 0, k), w2.narrow(1, 0, k));
            var y = MixtralBlockSparseTop2MLP.Compute(job.X.to(w1.dtype), w1, w3, w2);
            job.Y.copy_(y);
        }
    }
}

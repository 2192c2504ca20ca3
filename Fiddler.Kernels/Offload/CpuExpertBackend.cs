using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>One CPU expert job: x [n, H] and y [n, H], float32, contiguous, in host memory; weights in the expert.</summary>
public sealed record CpuExpertJob(MixtralBlockSparseTop2MLP Expert, Tensor X, Tensor Y);

/// <summary>Computes a layer's CPU experts (all of them in one call, so an implementation can use one parallel region).</summary>
public interface ICpuExpertBackend
{
    string Name { get; }

    void Run(IReadOnlyList<CpuExpertJob> jobs);
}

/// <summary>
/// CPU experts through libtorch's CPU linear (oneDNN; AMX on CPUs that have it): the seed's way, and the better one
/// for large token batches. Activations are cast to the weights' dtype, as HF does.
/// </summary>
public sealed class TorchCpuBackend : ICpuExpertBackend
{
    public string Name => "torch";

    public void Run(IReadOnlyList<CpuExpertJob> jobs)
    {
        // Runs on a worker thread: its own dispose scope (TorchSharp scopes are per thread).
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var job in jobs)
        {
            var e = job.Expert;
            var y = MixtralBlockSparseTop2MLP.Compute(job.X.to(e.Gate.Weight.dtype), e.Gate.Weight, e.Up.Weight, e.Down.Weight);
            job.Y.copy_(y);
        }
    }
}

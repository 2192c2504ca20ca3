using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Runs one layer's chosen experts and adds their weighted outputs into <c>output</c> [N, D].</summary>
public interface IExpertExecutor
{
    void Run(MixtralSparseMoeBlock block, Tensor flat, Tensor routingWeights, IReadOnlyList<ExpertAssignment> assignments, Tensor output);

    /// <summary>
    /// Finishes whatever <see cref="Run"/> left in flight (a CPU lane the device waits for) and rethrows its failure.
    /// The model calls it after its last layer, before anything reads the output.
    /// </summary>
    void Complete();
}

using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Runs one layer's chosen experts: the sum of their weighted outputs.</summary>
public interface IExpertExecutor
{
    /// <summary>The layer's expert output [N, D] for <paramref name="flat"/> [N, D] (the caller owns it).</summary>
    Tensor Run(MixtralSparseMoeBlock block, Tensor flat, Tensor routingWeights, IReadOnlyList<ExpertAssignment> assignments);

    /// <summary>
    /// The layer's expert ids [N, K] on the host, read after all device work queued before (the wait every layer has).
    /// An executor may queue copies it will need for the layer (<paramref name="flat"/>'s rows) before it, so that one
    /// wait covers them all.
    /// </summary>
    long[] ReadRouting(MixtralSparseMoeBlock block, Tensor flat, Tensor ids) => Runtime.HostReadback.Longs(ids);

    /// <summary>
    /// Finishes whatever <see cref="Run"/> left in flight (a CPU lane the device waits for) and rethrows its failure.
    /// The model calls it after its last layer, before anything reads the output.
    /// </summary>
    void Complete();
}

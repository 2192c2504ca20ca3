using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Runs one layer's chosen experts and adds their weighted outputs into <c>output</c> [N, D].</summary>
public interface IExpertExecutor
{
    void Run(MixtralSparseMoeBlock block, Tensor flat, Tensor routingWeights, IReadOnlyList<ExpertAssignment> assignments, Tensor output);
}

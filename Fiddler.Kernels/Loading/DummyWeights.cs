using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Loading;

/// <summary>
/// Random weights for benchmarks of full-size shapes without a checkpoint: N(0, 0.02) for matrices (HF's
/// initializer_range), ones for norms. Device tensors use torch's generator; host tensors the parallel
/// <see cref="RandomFill"/> (tens of GB of host experts in seconds, where torch's normal_ takes minutes).
/// </summary>
public static class DummyWeights
{
    public static void Fill(nn.Module model, long seed = 0)
    {
        using var noGrad = no_grad();
        manual_seed(seed);
        if (cuda.is_available()) cuda.manual_seed_all(seed);
        ulong hostSeed = (ulong)seed + 1;
        foreach (var (name, p) in model.named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(1);
            else if (p.device_type == DeviceType.CPU) RandomFill.FillNormal(p, hostSeed++, 0.02f);
            else p.normal_(0, 0.02);
        }
    }
}

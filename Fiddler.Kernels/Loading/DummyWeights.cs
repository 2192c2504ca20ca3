using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Loading;

/// <summary>
/// Random weights for benchmarks of full-size shapes without a checkpoint: N(0, 0.02) for matrices (HF's
/// initializer_range), ones for norms, generated on the parameter's own device from one seed.
/// </summary>
public static class DummyWeights
{
    public static void Fill(nn.Module model, ulong seed = 0)
    {
        using var noGrad = no_grad();
        var generators = new Dictionary<string, torch.Generator>();
        foreach (var (name, p) in model.named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) { p.fill_(1); continue; }
            string key = p.device.ToString();
            if (!generators.TryGetValue(key, out var g))
                generators[key] = g = p.device_type == DeviceType.CUDA ? new torch.Generator(seed, p.device) : new torch.Generator(seed);
            p.normal_(0, 0.02, g);
        }
        foreach (var g in generators.Values) g.Dispose();
    }
}

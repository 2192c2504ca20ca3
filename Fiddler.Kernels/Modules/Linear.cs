using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// A bias-free projection (HF <c>nn.Linear(bias=False)</c>). Its weight starts uninitialised: every value comes from
/// the checkpoint (or the dummy-weight generator), so paying for a random init of 46 B parameters would be waste.
/// </summary>
public sealed class Linear : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;

    public Linear(long inFeatures, long outFeatures, ScalarType dtype, Device device, bool pinned = false, bool hugePages = false) : base(nameof(Linear))
    {
        _weight = Weights.Empty([outFeatures, inFeatures], dtype, device, pinned, hugePages);
        RegisterComponents();
    }

    /// <summary>A projection whose weight [out, in] is <paramref name="weight"/> itself (e.g. a view into a fused
    /// weight: whatever fills this parameter fills that memory). Moving the module with <c>.to()</c> would copy the view
    /// and end the sharing: build such modules on their device.</summary>
    public Linear(Tensor weight) : base(nameof(Linear))
    {
        if (weight.dim() != 2) throw new ArgumentException($"a projection weight is [out, in], got {weight.dim()} dims", nameof(weight));
        _weight = new Parameter(weight, requires_grad: false);
        RegisterComponents();
    }

    public Tensor Weight => _weight;

    public override Tensor forward(Tensor x) => nn.functional.linear(x, _weight);
}

/// <summary>Allocation of parameters that the loader fills.</summary>
public static class Weights
{
    /// <param name="pinned">Page-locked host memory (CPU only): what CUDA copies and CPU experts want.</param>
    /// <param name="hugePages">With <paramref name="pinned"/>: in 2 MiB pages (<see cref="Runtime.HugePages"/>).</param>
    public static Parameter Empty(long[] shape, ScalarType dtype, Device device, bool pinned = false, bool hugePages = false)
    {
        if (!pinned || device.type != DeviceType.CPU) return new(torch.empty(shape, dtype, device), requires_grad: false);
        return new(Cuda.HostPinning.Empty(shape, dtype, hugePages), requires_grad: false);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>Matches HF MixtralRMSNorm: normalise in fp32, cast back, then scale by the weight.</summary>
public sealed class MixtralRMSNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;

    public MixtralRMSNorm(long hidden, double eps, ScalarType dtype, Device device) : base(nameof(MixtralRMSNorm))
    {
        _weight = Weights.Empty([hidden], dtype, device);
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        h = h * torch.rsqrt(variance + _eps);
        return (_weight * h.to(x.dtype)).MoveToOuterDisposeScope();
    }
}

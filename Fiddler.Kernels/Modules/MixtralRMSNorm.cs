using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// HF MixtralRMSNorm: weight × (x · rsqrt(mean(x²) + eps)), normalised in fp32 and cast back before the weight.
/// <para>
/// Computed as a layer norm (no affine) of [x, −x]: that pair has mean 0 and variance mean(x²), so layer_norm gives
/// x · rsqrt(mean(x²) + eps) with fp32 accumulation, rounded once to the activation dtype; then the weight multiplies in
/// that dtype, as in HF. Three kernels (sign pair, layer norm, weight) instead of HF's eight: a decode step is bound by
/// the host's kernel launches. The sum of squares is accumulated in another order than torch.mean's, so in bf16 an
/// output may land one step away from HF's (fp32: relative differences ~1e-7), like any other kernel difference.
/// </para>
/// </summary>
public sealed class MixtralRMSNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;
    private readonly long _hidden;
    private readonly Tensor _signs;

    public MixtralRMSNorm(long hidden, double eps, ScalarType dtype, Device device) : base(nameof(MixtralRMSNorm))
    {
        _weight = Weights.Empty([hidden], dtype, device);
        _eps = eps;
        _hidden = hidden;
        RegisterComponents();
        // [[1], [−1]] in the module's dtype on its device (multiplying by ±1 is exact in every dtype). Made after
        // RegisterComponents: a constant, not a buffer of the checkpoint's. Like the weight, built where it runs.
        _signs = tensor(new float[] { 1, -1 }, [2, 1]).to(dtype, device);
        _signs.DetachFromDisposeScope();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var pair = x.unsqueeze(-2) * _signs;                                             // [..., 2, D]: x and −x
        var normed = nn.functional.layer_norm(pair, [2, _hidden], eps: _eps).select(-2, 0); // [..., D]
        return (_weight * normed).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _signs.Dispose();
        base.Dispose(disposing);
    }
}

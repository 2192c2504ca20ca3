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
    private Tensor? _signs;

    public MixtralRMSNorm(long hidden, double eps, ScalarType dtype, Device device) : base(nameof(MixtralRMSNorm))
    {
        _weight = Weights.Empty([hidden], dtype, device);
        _eps = eps;
        _hidden = hidden;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var pair = x.unsqueeze(-2) * Signs(x);                                             // [..., 2, D]: x and −x
        var normed = nn.functional.layer_norm(pair, [2, _hidden], eps: _eps).select(-2, 0); // [..., D]
        return (_weight * normed).MoveToOuterDisposeScope();
    }

    /// <summary>[[1], [−1]] in x's dtype and device, kept between calls (multiplying by ±1 is exact in every dtype).</summary>
    private Tensor Signs(Tensor x)
    {
        if (_signs is { } s && s.dtype == x.dtype && s.device_type == x.device_type && s.device_index == x.device_index) return s;
        _signs?.Dispose();
        _signs = tensor(new float[] { 1, -1 }, [2, 1]).to(x.dtype, x.device);
        _signs.DetachFromDisposeScope();
        return _signs;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) { _signs?.Dispose(); _signs = null; }
        base.Dispose(disposing);
    }
}

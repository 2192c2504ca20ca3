using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// Default RoPE as HF MixtralRotaryEmbedding computes it: inverse frequencies and angles in fp32, cos/sin cast to
/// the activation dtype. Computed per forward for the positions in flight (T×head_dim values), not tabled, and shared
/// by every layer of that forward.
/// </summary>
public sealed class MixtralRotaryEmbedding
{
    private readonly float[] _invFreq;
    private Tensor? _invFreqOnDevice; // one copy on the compute device: a host→device copy per token would sync

    public MixtralRotaryEmbedding(int headDim, double theta)
    {
        _invFreq = new float[headDim / 2];
        for (int i = 0; i < _invFreq.Length; i++)
            _invFreq[i] = (float)(1.0 / Math.Pow(theta, (float)(2 * i) / headDim));
    }

    /// <summary>
    /// cos and the signed sin, each [T, 1, head_dim] (broadcast over batch and heads of a [B, T, heads, Dh] tensor),
    /// for positions start..start+T-1. The signed sin is HF's sin with its first half negated: with it, rotate_half
    /// becomes a roll (see <see cref="Apply"/>).
    /// </summary>
    public (Tensor Cos, Tensor SignedSin) Angles(long start, long count, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        // Scalars made and disposed here, and halves written in place of cat: once per forward, nothing for the
        // finalizer (implicit Scalars and cat's handle array never leave its queue; see TensorDims).
        using var from = start.ToScalar();
        using var to = (start + count).ToScalar();
        var positions = arange(from, to, TensorDims.One, ScalarType.Float32, device);         // [T]
        var freqs = outer(positions, InvFreq(device));                                          // [T, Dh/2]
        long half = freqs.size(1);
        var cos = empty([count, 2 * half], ScalarType.Float32, device);                        // [T, Dh]
        cos.narrow(-1, 0, half).copy_(freqs);
        cos.narrow(-1, half, half).copy_(freqs);
        cos.cos_();
        var signedSin = empty([count, 2 * half], ScalarType.Float32, device);                  // [T, Dh]: (-sin, sin)
        signedSin.narrow(-1, half, half).copy_(freqs).sin_();
        signedSin.narrow(-1, 0, half).copy_(signedSin.narrow(-1, half, half)).neg_();
        return (cos.to(dtype).unsqueeze(1).MoveToOuterDisposeScope(), signedSin.to(dtype).unsqueeze(1).MoveToOuterDisposeScope());
    }

    private Tensor InvFreq(Device device)
    {
        if (_invFreqOnDevice is { } t && t.device_type == device.type && t.device_index == device.index) return t;
        _invFreqOnDevice?.Dispose();
        _invFreqOnDevice = tensor(_invFreq, device: device);
        _invFreqOnDevice.DetachFromDisposeScope();
        return _invFreqOnDevice;
    }

    /// <summary>
    /// HF's x * cos + rotate_half(x) * sin for x [B, T, heads, Dh] (any strides), with rotate_half(x) * sin written as
    /// roll(x, Dh/2) * signedSin: (x2, x1) * (-sin1, sin2) = (-x2 * sin1, x1 * sin2), the same products (a negation is
    /// exact), so the same bits as HF's three-op form, in one kernel fewer.
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor signedSin)
    {
        using var scope = NewDisposeScope();
        var rolled = x.roll(x.size(-1) / 2, -1);
        return (x * cos).add_(rolled * signedSin, TensorDims.One).MoveToOuterDisposeScope(); // "+" would make a Scalar (see TensorDims)
    }
}

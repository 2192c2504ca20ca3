using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// Default RoPE as HF MixtralRotaryEmbedding computes it: inverse frequencies and angles in fp32, cos/sin cast to
/// the activation dtype. Computed per forward for the positions in flight (T×head_dim values), not tabled.
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

    /// <summary>cos and sin, each [T, head_dim], for positions start..start+T-1.</summary>
    public (Tensor Cos, Tensor Sin) Angles(long start, long count, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        var positions = arange(start, start + count, ScalarType.Float32, device);            // [T]
        var invFreq = InvFreq(device);                                                          // [Dh/2]
        var freqs = outer(positions, invFreq);                                                  // [T, Dh/2]
        var emb = cat([freqs, freqs], -1);                                                      // [T, Dh]
        return (emb.cos().to(dtype).MoveToOuterDisposeScope(), emb.sin().to(dtype).MoveToOuterDisposeScope());
    }

    private Tensor InvFreq(Device device)
    {
        if (_invFreqOnDevice is { } t && t.device_type == device.type && t.device_index == device.index) return t;
        _invFreqOnDevice?.Dispose();
        _invFreqOnDevice = tensor(_invFreq, device: device);
        _invFreqOnDevice.DetachFromDisposeScope();
        return _invFreqOnDevice;
    }

    /// <summary>x * cos + rotate_half(x) * sin, x [B, heads, T, Dh].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([-x2, x1], -1);
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }
}

using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

// B=batch T=new tokens S=attended positions H=heads Hkv=kv heads Dh=head dim D=hidden

/// <summary>
/// Grouped-query attention as HF MixtralAttention, on TorchSharp's scaled_dot_product_attention, reading and writing
/// a preallocated <see cref="KvCache"/>. Sliding window: a query at position i sees keys j with i - W &lt; j ≤ i.
/// </summary>
public sealed class MixtralAttention : nn.Module
{
    [ComponentName(Name = "q_proj")] private readonly Linear _qProj;
    [ComponentName(Name = "k_proj")] private readonly Linear _kProj;
    [ComponentName(Name = "v_proj")] private readonly Linear _vProj;
    [ComponentName(Name = "o_proj")] private readonly Linear _oProj;
    private readonly int _layer, _heads, _kvHeads, _headDim;
    private readonly int? _window;

    public MixtralAttention(MixtralConfig c, int layer, ScalarType dtype, Device device) : base(nameof(MixtralAttention))
    {
        _layer = layer;
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _window = c.SlidingWindow;
        _qProj = new Linear(c.HiddenSize, _heads * _headDim, dtype, device);
        _kProj = new Linear(c.HiddenSize, _kvHeads * _headDim, dtype, device);
        _vProj = new Linear(c.HiddenSize, _kvHeads * _headDim, dtype, device);
        _oProj = new Linear(_heads * _headDim, c.HiddenSize, dtype, device);
        RegisterComponents();
    }

    /// <param name="x">[B, T, D] hidden states of positions start..start+T-1.</param>
    public Tensor Forward(Tensor x, long start, Tensor cos, Tensor sin, KvCache cache)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = _qProj.forward(x).view(b, t, _heads, _headDim).transpose(1, 2);      // [B, H, T, Dh]
        var k = _kProj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);    // [B, Hkv, T, Dh]
        var v = _vProj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = MixtralRotaryEmbedding.Apply(q, cos, sin);
        k = MixtralRotaryEmbedding.Apply(k, cos, sin);
        cache.Write(_layer, start, k, v);

        long end = start + t;
        // One new token with a window: attend only to the last W positions; no mask needed.
        long from = t == 1 && _window is int w ? Math.Max(0, end - w) : 0;
        var (keys, values) = cache.Read(_layer, from, end);                           // [B, Hkv, S, Dh]
        int groups = _heads / _kvHeads;
        if (groups > 1)
        {
            // HF repeat_kv: each kv head serves `groups` consecutive query heads.
            keys = keys.repeat_interleave(groups, 1);
            values = values.repeat_interleave(groups, 1);
        }
        var mask = t == 1 ? null : CausalMask(start, t, end, x.device);               // [T, S]
        var o = nn.functional.scaled_dot_product_attention(q, keys, values, mask, 0.0, false); // [B, H, T, Dh]
        o = o.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return _oProj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>True where query i (position start+i) may see key j: j ≤ start+i and, with a window, start+i-j &lt; W.</summary>
    private Tensor CausalMask(long start, long t, long s, Device device)
    {
        var qPos = arange(start, start + t, ScalarType.Int64, device).unsqueeze(1);  // [T, 1]
        var kPos = arange(0, s, ScalarType.Int64, device).unsqueeze(0);               // [1, S]
        var mask = kPos <= qPos;
        if (_window is int w) mask = mask & (qPos - kPos < w);
        return mask;
    }
}

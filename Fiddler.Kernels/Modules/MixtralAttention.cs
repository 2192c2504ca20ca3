using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

// B=batch T=new tokens S=attended positions H=heads Hkv=kv heads G=H/Hkv Dh=head dim D=hidden

/// <summary>
/// Grouped-query attention as HF MixtralAttention, on TorchSharp's scaled_dot_product_attention, reading and writing
/// a preallocated <see cref="KvCache"/>. Sliding window: a query at position i sees keys j with i - W &lt; j ≤ i.
/// <para>
/// q_proj, k_proj and v_proj are row blocks of one fused weight [(H + 2 Hkv) Dh, D] (the checkpoint fills them by
/// name): one matmul per layer, and RoPE runs once over the q and k heads together. A decode step (T = 1) needs no
/// mask and no repeat_kv: the G query heads that share a kv head are G queries against it. Same function; in bf16 the
/// attention kernel may accumulate those G rows in another order than G separate heads (one bf16 step apart in a few
/// outputs on CPU at Mixtral shapes), within the fixture parity's tolerance like every other kernel difference.
/// </para>
/// </summary>
public sealed class MixtralAttention : nn.Module
{
    [ComponentName(Name = "q_proj")] private readonly Linear _qProj;
    [ComponentName(Name = "k_proj")] private readonly Linear _kProj;
    [ComponentName(Name = "v_proj")] private readonly Linear _vProj;
    [ComponentName(Name = "o_proj")] private readonly Linear _oProj;
    private readonly Tensor _qkv;
    private readonly int _layer, _heads, _kvHeads, _headDim;
    private readonly int? _window;

    public MixtralAttention(MixtralConfig c, int layer, ScalarType dtype, Device device) : base(nameof(MixtralAttention))
    {
        _layer = layer;
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _window = c.SlidingWindow;
        long q = _heads * _headDim, kv = _kvHeads * _headDim;
        _qkv = empty([q + 2 * kv, c.HiddenSize], dtype, device);
        _qkv.DetachFromDisposeScope();
        _qProj = new Linear(_qkv.narrow(0, 0, q));
        _kProj = new Linear(_qkv.narrow(0, q, kv));
        _vProj = new Linear(_qkv.narrow(0, q + kv, kv));
        _oProj = new Linear(_heads * _headDim, c.HiddenSize, dtype, device);
        RegisterComponents();
    }

    /// <summary>The fused projection weight [(H + 2 Hkv) Dh, D]: q_proj, k_proj and v_proj are views of it. A registered
    /// buffer of the module (disposed with it), not a parameter: the checkpoint fills it through the three views.</summary>
    public Tensor QkvWeight => _qkv;

    /// <param name="x">[B, T, D] hidden states of positions start..start+T-1.</param>
    /// <param name="cos">[T, 1, Dh], from <see cref="MixtralRotaryEmbedding.Angles"/>.</param>
    /// <param name="signedSin">[T, 1, Dh], from <see cref="MixtralRotaryEmbedding.Angles"/>.</param>
    public Tensor Forward(Tensor x, long start, Tensor cos, Tensor signedSin, KvCache cache)
    {
        using var scope = NewDisposeScope();
        long b = x.size(0), t = x.size(1);
        var qkv = nn.functional.linear(x, _qkv).view(b, t, _heads + 2 * _kvHeads, _headDim);  // [B, T, H+2Hkv, Dh]
        var qk = MixtralRotaryEmbedding.Apply(qkv.narrow(2, 0, _heads + _kvHeads), cos, signedSin); // [B, T, H+Hkv, Dh]
        var k = qk.narrow(2, _heads, _kvHeads).transpose(1, 2);                             // [B, Hkv, T, Dh]
        var v = qkv.narrow(2, _heads + _kvHeads, _kvHeads).transpose(1, 2);
        cache.Write(_layer, start, k, v);

        long end = start + t;
        int groups = _heads / _kvHeads;
        Tensor o;
        if (t == 1)
        {
            // One new token with a window: attend only to the last W positions. Query head h uses kv head h / G (HF
            // repeat_kv), so [B, 1, H, Dh] viewed as [B, Hkv, G, Dh] puts each group's queries beside their kv head.
            long from = _window is int w ? Math.Max(0, end - w) : 0;
            var (keys, values) = cache.Read(_layer, from, end);                               // [B, Hkv, S, Dh]
            var q = qk.narrow(2, 0, _heads).reshape(b, _kvHeads, groups, _headDim);
            o = nn.functional.scaled_dot_product_attention(q, keys, values, null, 0.0, false); // [B, Hkv, G, Dh]
        }
        else
        {
            var q = qk.narrow(2, 0, _heads).transpose(1, 2);                                  // [B, H, T, Dh]
            var (keys, values) = cache.Read(_layer, 0, end);                                  // [B, Hkv, S, Dh]
            if (groups > 1)
            {
                keys = keys.repeat_interleave(groups, 1);
                values = values.repeat_interleave(groups, 1);
            }
            var mask = CausalMask(start, t, end, x.device);                                   // [T, S]
            o = nn.functional.scaled_dot_product_attention(q, keys, values, mask, 0.0, false).transpose(1, 2); // [B, T, H, Dh]
        }
        return _oProj.forward(o.reshape(b, t, _heads * _headDim)).MoveToOuterDisposeScope();
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

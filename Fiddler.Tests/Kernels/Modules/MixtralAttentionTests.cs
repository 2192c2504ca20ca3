using Xunit;
using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Modules;

public class MixtralAttentionTests
{
    private static MixtralConfig Tiny(int? window) => MixtralConfig.Mixtral8x7B with
    {
        HiddenSize = 64, IntermediateSize = 32, NumHiddenLayers = 1, NumAttentionHeads = 8, NumKeyValueHeadsRaw = 2,
        SlidingWindow = window, RopeThetaRaw = 1e4,
    };

    [Fact]
    public void Rope_RollWithSignedSin_IsBitwiseHfRotateHalf_InBf16()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var rope = new MixtralRotaryEmbedding(16, 1e4);
        var x = randn([2, 5, 3, 16]).to(ScalarType.BFloat16);                 // [B, T, heads, Dh]
        var (cos, signedSin) = rope.Angles(7, 5, ScalarType.BFloat16, CPU);    // [T, 1, Dh]
        // HF, computed here from scratch: inv_freq = 1 / theta^(2i/Dh), angles = positions ⊗ inv_freq, emb = (f, f),
        // x * cos(emb) + cat(-x2, x1) * sin(emb), cos/sin cast to the activation dtype.
        var invFreq = tensor(Enumerable.Range(0, 8).Select(i => (float)(1.0 / Math.Pow(1e4, (float)(2 * i) / 16))).ToArray());
        var freqs = outer(arange(7, 12, ScalarType.Float32), invFreq);
        var emb = cat([freqs, freqs], -1);
        var hfCos = emb.cos().to(ScalarType.BFloat16).unsqueeze(1);
        var hfSin = emb.sin().to(ScalarType.BFloat16).unsqueeze(1);
        Assert.True(cos.eq(hfCos).all().item<bool>());
        var hf = x * hfCos + cat([-x.narrow(-1, 8, 8), x.narrow(-1, 0, 8)], -1) * hfSin;
        Assert.True(MixtralRotaryEmbedding.Apply(x, cos, signedSin).eq(hf).all().item<bool>());
    }

    [Fact]
    public void QkvProjections_AreViewsOfTheFusedWeight_SoFillingThemByNameFillsIt()
    {
        using var scope = NewDisposeScope();
        using var attention = new MixtralAttention(Tiny(null), 0, ScalarType.Float32, CPU);
        var p = attention.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        using (no_grad())
        {
            p["q_proj.weight"].fill_(1);
            p["k_proj.weight"].fill_(2);
            p["v_proj.weight"].fill_(3);
        }
        var fused = attention.QkvWeight;                                        // [(8 + 2 + 2) * 8, 64]
        Assert.Equal([96L, 64], fused.shape);
        Assert.Equal(1f, fused.narrow(0, 0, 64).mean().item<float>());
        Assert.Equal(2f, fused.narrow(0, 64, 16).mean().item<float>());
        Assert.Equal(3f, fused.narrow(0, 80, 16).mean().item<float>());
        // The fused storage is the module's one buffer (disposed with it), not a parameter the loader would look for.
        Assert.Equal("_qkv", Assert.Single(attention.named_buffers()).name);
        Assert.Equal(4, p.Count);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(4)]
    public void DecodeStep_GroupedQueries_MatchTheMaskedPrefillPath(int? window)
    {
        using var scope = NewDisposeScope();
        manual_seed(11);
        var c = Tiny(window);
        using var attention = new MixtralAttention(c, 0, ScalarType.Float32, CPU);
        using (no_grad()) foreach (var (_, w) in attention.named_parameters()) w.normal_(0, 0.2);
        var rope = new MixtralRotaryEmbedding(c.HeadDim, c.RopeTheta);
        var x = randn([2, 7, 64]);

        // Reference: all 7 positions in one prefill (the masked, repeat_kv path); the last row is position 6.
        using var full = new KvCache(1, 2, 2, 8, 8, ScalarType.Float32, CPU);
        var (cos, sin) = rope.Angles(0, 7, ScalarType.Float32, CPU);
        var expected = attention.Forward(x, 0, cos, sin, full).narrow(1, 6, 1);

        // Decode: 6 positions prefilled, then one token on the T = 1 path.
        using var cache = new KvCache(1, 2, 2, 8, 8, ScalarType.Float32, CPU);
        var (cos6, sin6) = rope.Angles(0, 6, ScalarType.Float32, CPU);
        attention.Forward(x.narrow(1, 0, 6), 0, cos6, sin6, cache);
        var (cos1, sin1) = rope.Angles(6, 1, ScalarType.Float32, CPU);
        var actual = attention.Forward(x.narrow(1, 6, 1), 6, cos1, sin1, cache);

        Assert.Equal(expected.shape, actual.shape);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-6), $"max |Δ| {(actual - expected).abs().max().item<float>()}");
    }
}

using Xunit;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Modules;

public class MixtralMoeTests
{
    private static MixtralConfig Tiny => MixtralConfig.Mixtral8x7B with
    {
        HiddenSize = 64, IntermediateSize = 48, NumHiddenLayers = 1, NumAttentionHeads = 8, NumKeyValueHeadsRaw = 2,
        NumLocalExperts = 8, NumExpertsPerTok = 2, RopeThetaRaw = 1e4,
    };

    [Fact]
    public void ResidentExpert_GateAndUpAreViewsOfOneFusedWeight_AndComputeHfSwiGlu()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        using var expert = new MixtralBlockSparseTop2MLP(Tiny, ScalarType.Float32, CPU);
        var p = expert.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        Assert.Equal(["w1.weight", "w2.weight", "w3.weight"], p.Keys.Order());
        using (no_grad())
            foreach (var w in p.Values) w.normal_(0, 0.2);
        var fused = Assert.IsType<TorchSharp.torch.Tensor>(expert.GateUpWeight, exactMatch: false);
        Assert.Equal([96L, 64], fused.shape);
        Assert.True(fused.narrow(0, 0, 48).eq(p["w1.weight"]).all().item<bool>());
        Assert.True(fused.narrow(0, 48, 48).eq(p["w3.weight"]).all().item<bool>());
        Assert.Equal("_gateUp", Assert.Single(expert.named_buffers()).name);

        var x = randn([5, 64]);
        // HF: w2(silu(w1 x) * w3 x), computed from the three named weights.
        var hf = nn.functional.linear(nn.functional.silu(nn.functional.linear(x, p["w1.weight"])) * nn.functional.linear(x, p["w3.weight"]), p["w2.weight"]);
        var ours = expert.forward(x);
        Assert.True(ours.allclose(hf, rtol: 1e-5, atol: 1e-6), $"max diff {(ours - hf).abs().max().item<float>()}");
    }

    [Fact]
    public void HostExpert_KeepsSeparateWeights()
    {
        using var expert = new MixtralBlockSparseTop2MLP(Tiny, ScalarType.Float32, CPU, fused: false);
        Assert.Null(expert.GateUpWeight);
        Assert.Empty(expert.named_buffers());
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void Route_SoftmaxOverTopKLogits_MatchesHfSoftmaxTopKRenormalise(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        manual_seed(11);
        using var moe = new MixtralSparseMoeBlock(Tiny, 0, dtype, CPU);
        var gate = moe.named_parameters().First(x => x.name == "gate.weight").parameter;
        using (no_grad()) gate.normal_(0, 0.5);
        var x = randn([64, 64]).to(dtype);
        var (ids, weights) = moe.Route(x);

        // HF: softmax over all experts in fp32, top-k, divide by their sum, cast to the activation dtype.
        var probs = nn.functional.linear(x, gate).softmax(-1, ScalarType.Float32);
        var (hfTop, hfIds) = probs.topk(2, dim: -1);
        var hfWeights = (hfTop / hfTop.sum(-1, keepdim: true)).to(dtype);
        Assert.True(ids.eq(hfIds).all().item<bool>());
        double tol = dtype == ScalarType.Float32 ? 1e-6 : 1e-2;
        var diff = (weights.to(ScalarType.Float32) - hfWeights.to(ScalarType.Float32)).abs().max().item<float>();
        Assert.True(diff <= tol, $"max weight diff {diff}");
        if (dtype == ScalarType.BFloat16)
        {
            // Mostly bitwise after the cast: at most a few of 128 weights one bf16 step apart.
            long differing = weights.ne(hfWeights).sum().item<long>();
            Assert.True(differing <= 4, $"{differing} of 128 bf16 weights differ");
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void RmsNorm_LayerNormOfSignPair_MatchesHfFormula(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        manual_seed(17);
        using var norm = new MixtralRMSNorm(4096, 1e-5, dtype, CPU);
        var w = norm.named_parameters().Single().parameter;
        using (no_grad()) w.copy_(rand([4096]) + 0.5);
        Assert.Empty(norm.named_buffers());
        var x = (randn([3, 5, 4096]) * 3).to(dtype);

        // HF: h = x.float(); h * rsqrt(h.pow(2).mean(-1, keepdim) + eps); weight * h.to(dtype).
        var h = x.to(ScalarType.Float32);
        var hf = w * (h * rsqrt(h.pow(2).mean([-1], keepdim: true) + 1e-5)).to(dtype);
        var ours = norm.forward(x);
        Assert.Equal(dtype, ours.dtype);
        Assert.Equal(x.shape, ours.shape);
        var rel = ((ours - hf).abs() / (hf.abs() + 1e-3)).to(ScalarType.Float32).max().item<float>();
        if (dtype == ScalarType.Float32) Assert.True(rel < 1e-5, $"fp32 max relative difference {rel}");
        else
        {
            Assert.True(rel < 1.6e-2, $"bf16 max relative difference {rel} (more than two bf16 steps)");
            double differing = ours.ne(hf).sum().item<long>() / (double)ours.NumberOfElements;
            Assert.True(differing < 0.02, $"{differing:P2} of bf16 outputs differ from HF's");
        }
    }

    [Fact]
    public void RmsNorm_ZeroRow_GivesZeros()
    {
        using var norm = new MixtralRMSNorm(64, 1e-6, ScalarType.Float32, CPU);
        using (no_grad()) norm.named_parameters().Single().parameter.fill_(2);
        var y = norm.forward(zeros([2, 64]));
        Assert.True(y.eq(0).all().item<bool>());
    }

    [Fact]
    public void Group_HostIds_ByExpertInOrder_AndRejectsIdsTheBlockCannotHave()
    {
        // 3 tokens, top-2: token 0 → 5, 1; token 1 → 1, 0; token 2 → 5, 7.
        var groups = ExpertAssignment.Group([5, 1, 1, 0, 5, 7], 3, 2, 8);
        Assert.Equal([0, 1, 5, 7], groups.Select(g => g.Expert));
        Assert.Equal([0L, 1L], groups[1].Tokens);
        Assert.Equal([1L, 0L], groups[1].Slots);
        Assert.Equal([0L, 2L], groups[2].Tokens);
        Assert.Throws<InvalidOperationException>(() => ExpertAssignment.Group([5, 8], 1, 2, 8));
        Assert.Throws<InvalidOperationException>(() => ExpertAssignment.Group([-1, 0], 1, 2, 8));
        Assert.Throws<ArgumentException>(() => ExpertAssignment.Group([1, 2, 3], 1, 2, 8));
    }

    [Fact]
    public void ExpectedHostExperts_IsTopKTimesTheHostShare()
    {
        using var scope = NewDisposeScope();
        var residency = Fiddler.Kernels.Offload.ExpertResidency.Where(1, 8, (l, e) => e < 6);
        using var block = new MixtralSparseMoeBlock(Tiny, 0, ScalarType.Float32, CPU, residency);
        Assert.Equal(0.5, block.ExpectedHostExperts, 9);   // 2 of 8 in host memory, top-2
        using var allResident = new MixtralSparseMoeBlock(Tiny, 0, ScalarType.Float32, CPU);
        Assert.Equal(0, allResident.ExpectedHostExperts);
    }
}

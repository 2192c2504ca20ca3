using Xunit;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Modules;

public class MixtralShapeTests
{
    [Fact]
    public void Mixtral8x7B_OnMetaDevice_Has46Point7BillionParameters()
    {
        using var model = new MixtralForCausalLM(MixtralConfig.Mixtral8x7B, ScalarType.BFloat16, META);
        long total = model.parameters().Sum(p => p.numel());
        // Mixtral-8x7B-v0.1 model card: 46.7 B; exact count from HF's MixtralForCausalLM(config).num_parameters().
        Assert.Equal(46_702_792_704L, total);
    }

    [Fact]
    public void Mixtral8x7B_OnMetaDevice_NamesParametersAsHuggingFaceCheckpoints()
    {
        using var model = new MixtralForCausalLM(MixtralConfig.Mixtral8x7B, ScalarType.BFloat16, META);
        var shapes = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.Equal(32 * (4 + 2 + 1 + 8 * 3) + 3, shapes.Count);
        Assert.Equal([32000L, 4096], shapes["model.embed_tokens.weight"]);
        Assert.Equal([1024L, 4096], shapes["model.layers.0.self_attn.k_proj.weight"]);
        Assert.Equal([8L, 4096], shapes["model.layers.31.block_sparse_moe.gate.weight"]);
        Assert.Equal([14336L, 4096], shapes["model.layers.5.block_sparse_moe.experts.7.w1.weight"]);
        Assert.Equal([4096L, 14336], shapes["model.layers.5.block_sparse_moe.experts.7.w2.weight"]);
        Assert.Equal([14336L, 4096], shapes["model.layers.5.block_sparse_moe.experts.7.w3.weight"]);
        Assert.Equal([4096L], shapes["model.norm.weight"]);
        Assert.Equal([32000L, 4096], shapes["lm_head.weight"]);
    }
}

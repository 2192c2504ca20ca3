using Xunit;
using System.Text.Json;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Tests.Support;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Loading;

/// <summary>Checkpoints and configs that do not fit each other: each is refused with the file, the tensor and the shapes,
/// before any weight is copied (most before any is allocated), and the process loads a good model afterwards.</summary>
public sealed partial class ModelLoaderTests
{
    [Fact]
    public void Load_FusedDownProjTransposed_ThrowsNamingTensorAndShapes()
    {
        var config = TinyCheckpoint.Config();
        string perExpert = TinyCheckpoint.Write(Dir("per-expert"), config);
        var fusedTensors = CheckpointFiles.ToFused(CheckpointFiles.Read(perExpert), config)
            .Select(t => t.Name == "model.layers.1.mlp.experts.down_proj" ? t with { Shape = [4, 48, 32] } : t);
        string fused = Dir("fused");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(fused, "config.json"));
        CheckpointFiles.Write(Path.Combine(fused, "model.safetensors"), fusedTensors);

        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(fused, Fp32));
        Assert.Contains("'model.layers.1.mlp.experts.down_proj'", e.Message);
        Assert.Contains("[4,48,32]", e.Message);
        Assert.Contains("[4, 32, …]", e.Message); // [E, H, I]
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_FusedGateUpTooFewRows_ThrowsNamingTensor()
    {
        var config = TinyCheckpoint.Config();
        string perExpert = TinyCheckpoint.Write(Dir("per-expert"), config);
        var fusedTensors = CheckpointFiles.ToFused(CheckpointFiles.Read(perExpert), config)
            .Select(t => t.Name == "model.layers.0.mlp.experts.gate_up_proj"
                ? t with { Shape = [4, 48, 32], Data = t.Data[..(4 * 48 * 32 * 4)] } : t);
        string fused = Dir("fused");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(fused, "config.json"));
        CheckpointFiles.Write(Path.Combine(fused, "model.safetensors"), fusedTensors);

        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(fused, Fp32));
        Assert.Contains("'model.layers.0.mlp.experts.gate_up_proj'", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_MissingExpertTensor_ThrowsNamingTensor()
    {
        const string missing = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
        string dir = TinyCheckpoint.Write(Dir("missing"), TinyCheckpoint.Config(), skip: n => n == missing);
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains(missing, e.Message);
        Assert.Contains("missing", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_MissingLmHeadUntied_ThrowsNamingLmHead()
    {
        string dir = TinyCheckpoint.Write(Dir("no-head"), TinyCheckpoint.Config(), skip: n => n == "lm_head.weight");
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("lm_head.weight", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_WrongShape_ThrowsNamingTensorAndBothShapes()
    {
        const string name = "model.layers.0.self_attn.k_proj.weight";
        string dir = TinyCheckpoint.Write(Dir("shape"), TinyCheckpoint.Config(),
            reshape: (n, s) => n == name ? [16, 31] : s);
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains($"'{name}'", e.Message);
        Assert.Contains("[16,31]", e.Message);
        Assert.Contains("[16,32]", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_ConfigDisagreesWithCheckpoint_ThrowsShapeMismatch()
    {
        string dir = TinyCheckpoint.Write(Dir("vocab"), TinyCheckpoint.Config());
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { VocabSize = 100 }));
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("[96,32]", e.Message);
        Assert.Contains("[100,32]", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Theory]
    [InlineData(SafetensorsDType.I32)]
    [InlineData(SafetensorsDType.I64)]
    [InlineData(SafetensorsDType.U8)]
    [InlineData(SafetensorsDType.BOOL)]
    [InlineData(SafetensorsDType.F64)]
    public void Load_NonFloatOrF64Weight_ThrowsNamingTensorAndDtype(SafetensorsDType dtype)
    {
        const string name = "model.layers.1.post_attention_layernorm.weight";
        string dir = TinyCheckpoint.Write(Dir("dtype"), TinyCheckpoint.Config());
        var tensors = CheckpointFiles.Read(dir).Select(t => t.Name == name
            ? t with { DType = dtype, Data = new byte[t.Shape.Aggregate(1L, (x, y) => x * y) * dtype.ElementSize()] } : t).ToList();
        CheckpointFiles.Write(Path.Combine(dir, "model.safetensors"), tensors);

        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains($"'{name}'", e.Message);
        Assert.Contains(dtype.ToString(), e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_ConfigWithFewerLayersThanTheCheckpoint_IsRefusedNotSilentlyTruncated()
    {
        string dir = TinyCheckpoint.Write(Dir("fewer-layers"), TinyCheckpoint.Config());
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { NumHiddenLayers = 1 }));
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("num_hidden_layers is 1", e.Message);
        Assert.Contains("layers 0..1", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_ConfigWithFewerExpertsThanTheCheckpoint_IsRefused()
    {
        string dir = TinyCheckpoint.Write(Dir("fewer-experts"), TinyCheckpoint.Config());
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { NumLocalExperts = 3 }));
        // The router's gate [4, H] is the first weight that disagrees.
        Assert.Contains("check config.json", Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32)).Message);

        // With gates of 3 experts, every parameter is found: expert 3's weights, left over, must still be refused.
        string gates3 = TinyCheckpoint.Write(Dir("gates-of-3"), TinyCheckpoint.Config(),
            reshape: (n, shape) => n.EndsWith("block_sparse_moe.gate.weight", StringComparison.Ordinal) ? [3, shape[1]] : shape);
        File.WriteAllText(Path.Combine(gates3, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { NumLocalExperts = 3 }));
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(gates3, Fp32));
        Assert.Contains("expert 3", e.Message);
        Assert.Contains("num_local_experts is 3", e.Message);
    }

    [Theory]
    [InlineData(2_000_000, 0, 0)]      // would allocate layer after layer for minutes
    [InlineData(0, int.MaxValue, 0)]   // an embedding libtorch cannot allocate
    [InlineData(0, 0, 402_653_184)]
    public void Load_ConfigFarLargerThanTheCheckpoint_FailsBeforeAllocatingInOneLine(int layers, int vocab, int hidden)
    {
        string dir = TinyCheckpoint.Write(Dir("huge"), TinyCheckpoint.Config());
        var config = TinyCheckpoint.Config();
        config = config with
        {
            NumHiddenLayers = layers > 0 ? layers : config.NumHiddenLayers,
            VocabSize = vocab > 0 ? vocab : config.VocabSize,
            HiddenSize = hidden > 0 ? hidden : config.HiddenSize,
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(config));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.ThrowsAny<Exception>(() => ModelLoader.Load(dir, Fp32));
        Assert.True(e is CheckpointMismatchException or ModelConfigException, $"{e.GetType().Name}: {e.Message}");
        Assert.Contains("config.json", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_FusedTensorWithTooFewSlabs_IsRefusedNotReadOutOfBounds()
    {
        // Experts 0-3 exist per expert for w1/w3 except that layer 0's gate_up is fused, with fewer slabs than experts.
        var config = TinyCheckpoint.Config();
        string perExpert = TinyCheckpoint.Write(Dir("per-expert"), config);
        var fusedTensors = CheckpointFiles.ToFused(CheckpointFiles.Read(perExpert), config)
            .Select(t => t.Name == "model.layers.0.mlp.experts.gate_up_proj"
                ? t with { Shape = [2, 96, 32], Data = t.Data[..(2 * 96 * 32 * 4)] } : t);
        string fused = Dir("fused-few-slabs");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(fused, "config.json"));
        CheckpointFiles.Write(Path.Combine(fused, "model.safetensors"), fusedTensors);
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(fused, Fp32));
        Assert.Contains("'model.layers.0.mlp.experts.gate_up_proj'", e.Message);
        Assert.Contains("[2,96,32]", e.Message);
        Assert.Contains("[4, 96, …]", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_FusedGateUpWithExtraRows_IsRefused()
    {
        var config = TinyCheckpoint.Config();
        string perExpert = TinyCheckpoint.Write(Dir("per-expert"), config);
        var fusedTensors = CheckpointFiles.ToFused(CheckpointFiles.Read(perExpert), config)
            .Select(t => t.Name == "model.layers.1.mlp.experts.gate_up_proj"
                ? t with { Shape = [4, 98, 32], Data = [.. t.Data, .. new byte[4 * 2 * 32 * 4]] } : t);
        string fused = Dir("fused-extra-rows");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(fused, "config.json"));
        CheckpointFiles.Write(Path.Combine(fused, "model.safetensors"), fusedTensors);
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(fused, Fp32));
        Assert.Contains("[4,98,32]", e.Message);
        Assert.Contains("[4, 96, …]", e.Message);
    }

    [Theory]
    [InlineData("\"2\"")]
    [InlineData("[2, 2.5]")]
    public void Load_BadEosTokenId_NamesConfigJson(string eos)
    {
        string dir = TinyCheckpoint.Write(Dir("eos"), TinyCheckpoint.Config());
        string json = File.ReadAllText(Path.Combine(dir, "config.json"));
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        node["eos_token_id"] = System.Text.Json.Nodes.JsonNode.Parse(eos);
        File.WriteAllText(Path.Combine(dir, "config.json"), node.ToJsonString());
        var e = Assert.Throws<ModelConfigException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("eos_token_id", e.Message);
    }

    [Fact]
    public void Load_UnusedTensorsOfOtherStandardDtypes_LoadButAWeightInOneIsRefused()
    {
        string dir = TinyCheckpoint.Write(Dir("other-dtypes"), TinyCheckpoint.Config());
        var tensors = CheckpointFiles.Read(dir);
        tensors.Add(new RawTensor("quant.meta", SafetensorsDType.U32, [2], new byte[8]));
        tensors.Add(new RawTensor("quant.scale", SafetensorsDType.F8_E4M3, [4], new byte[4]));
        CheckpointFiles.Write(Path.Combine(dir, "model.safetensors"), tensors);
        using (var loaded = ModelLoader.Load(dir, Fp32))
            Assert.Equal(["quant.meta", "quant.scale"], loaded.UnusedTensors);

        // A weight the model needs, stored as fp8: refused by name and dtype, not read as garbage.
        const string name = "model.layers.0.self_attn.q_proj.weight";
        var fp8 = tensors.Select(t => t.Name == name ? t with { DType = SafetensorsDType.F8_E4M3, Data = t.Data[..(t.Data.Length / 4)] } : t);
        CheckpointFiles.Write(Path.Combine(dir, "model.safetensors"), fp8);
        var e = Assert.Throws<CheckpointMismatchException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains(name, e.Message);
        Assert.Contains("F8_E4M3", e.Message);
    }
}

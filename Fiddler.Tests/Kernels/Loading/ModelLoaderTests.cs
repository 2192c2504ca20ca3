using Xunit;
using System.Text.Json;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Tests.Support;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Loading;

public sealed class ModelLoaderTests : IDisposable
{
    private readonly string _root = TinyCheckpoint.TempDir();
    private static readonly LoadOptions Fp32 = new(CPU, ScalarType.Float32);
    private static readonly long[] Ids = [5, 17, 33, 2, 90, 64];

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Dir(string name)
    {
        string dir = Path.Combine(_root, name);
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static Dictionary<string, Tensor> Parameters(LoadedModel m) =>
        m.Model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);

    /// <summary>fp32 logits [T, V] of every position of <see cref="Ids"/>.</summary>
    private static Tensor Logits(LoadedModel m)
    {
        using var noGrad = no_grad();
        using var cache = m.Model.NewCache(Ids.Length);
        using var ids = tensor(Ids).unsqueeze(0);
        using var logits = m.Model.Forward(ids, cache, allPositions: true);
        return logits[0].clone();
    }

    /// <summary>Same shape, dtype and every element bit-for-bit equal in value.</summary>
    private static bool Same(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape) || a.dtype != b.dtype) return false;
        using var eq = a.eq(b);
        using var all = eq.all();
        return all.item<bool>();
    }

    private static void AssertSameWeights(LoadedModel expected, LoadedModel actual)
    {
        var a = Parameters(expected);
        var b = Parameters(actual);
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (name, t) in a) Assert.True(Same(t, b[name]), $"parameter {name} differs");
        using var la = Logits(expected);
        using var lb = Logits(actual);
        Assert.True(Same(la, lb), "logits differ");
    }

    /// <summary>After a failed load, a good checkpoint must still load and run in this process.</summary>
    private void AssertGoodLoadStillWorks()
    {
        string dir = Dir("healthy-" + Guid.NewGuid().ToString("N"));
        TinyCheckpoint.Write(dir, TinyCheckpoint.Config(), seed: 3);
        using var loaded = ModelLoader.Load(dir, Fp32);
        Assert.Empty(loaded.UnusedTensors);
        using var logits = Logits(loaded);
        Assert.Equal([Ids.Length, 96L], logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void Load_PerExpertLayout_FillsEveryParameterFromItsTensor()
    {
        string dir = TinyCheckpoint.Write(Dir("per-expert"), TinyCheckpoint.Config());
        var raw = CheckpointFiles.Read(dir).ToDictionary(t => t.Name);
        using var loaded = ModelLoader.Load(dir, Fp32);
        var parameters = Parameters(loaded);
        Assert.Equal(raw.Keys.Order(), parameters.Keys.Order());
        foreach (var (name, p) in parameters)
            Assert.Equal(raw[name].Data, p.bytes.ToArray());
        Assert.Empty(loaded.UnusedTensors);
        Assert.Equal(Path.GetFullPath(dir), loaded.Directory);
        Assert.Null(loaded.Tokenizer);
    }

    [Fact]
    public void Load_FusedTransformers5Layout_SameWeightsAsPerExpert()
    {
        var config = TinyCheckpoint.Config();
        string perExpert = TinyCheckpoint.Write(Dir("per-expert"), config, seed: 11);
        var raw = CheckpointFiles.Read(perExpert);
        string fused = Dir("fused");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(fused, "config.json"));
        CheckpointFiles.Write(Path.Combine(fused, "model.safetensors"), CheckpointFiles.ToFused(raw, config));
        using (var check = new SafetensorsCheckpoint(fused))
        {
            Assert.DoesNotContain(check.Names, n => n.Contains("block_sparse_moe", StringComparison.Ordinal));
            Assert.Equal([4L, 96, 32], check.Info("model.layers.1.mlp.experts.gate_up_proj").Shape);
            Assert.Equal([4L, 32, 48], check.Info("model.layers.1.mlp.experts.down_proj").Shape);
        }

        using var a = ModelLoader.Load(perExpert, Fp32);
        using var b = ModelLoader.Load(fused, Fp32);
        Assert.Empty(b.UnusedTensors);
        AssertSameWeights(a, b);

        // The comparison is sensitive to the gate/up order: swapping the halves must change the model.
        string swapped = Dir("fused-up-first");
        File.Copy(Path.Combine(perExpert, "config.json"), Path.Combine(swapped, "config.json"));
        CheckpointFiles.Write(Path.Combine(swapped, "model.safetensors"), CheckpointFiles.ToFused(raw, config, upFirst: true));
        using var c = ModelLoader.Load(swapped, Fp32);
        using var la = Logits(a);
        using var lc = Logits(c);
        Assert.False(Same(la, lc));
    }

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
    public void Load_TiedEmbeddingsWithoutLmHead_LmHeadIsEmbedding()
    {
        var config = TinyCheckpoint.Config() with { TieWordEmbeddings = true };
        string dir = TinyCheckpoint.Write(Dir("tied"), config, skip: n => n == "lm_head.weight");
        using var loaded = ModelLoader.Load(dir, Fp32);
        var p = Parameters(loaded);
        Assert.True(Same(p["lm_head.weight"], p["model.embed_tokens.weight"]));
        Assert.Empty(loaded.UnusedTensors);
        using var logits = Logits(loaded);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void Load_TiedEmbeddingsWithLmHeadPresent_UsesLmHeadTensor()
    {
        var config = TinyCheckpoint.Config() with { TieWordEmbeddings = true };
        string dir = TinyCheckpoint.Write(Dir("tied-with-head"), config);
        var head = CheckpointFiles.Read(dir).Single(t => t.Name == "lm_head.weight");
        using var loaded = ModelLoader.Load(dir, Fp32);
        var p = Parameters(loaded);
        Assert.Equal(head.Data, p["lm_head.weight"].bytes.ToArray());
        Assert.False(Same(p["lm_head.weight"], p["model.embed_tokens.weight"]));
    }

    [Fact]
    public void Load_ShardedWithIndex_SameWeightsAsSingleFile()
    {
        string single = TinyCheckpoint.Write(Dir("single"), TinyCheckpoint.Config(), seed: 5);
        var raw = CheckpointFiles.Read(single);
        string sharded = Dir("sharded");
        File.Copy(Path.Combine(single, "config.json"), Path.Combine(sharded, "config.json"));
        string[] shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        var parts = raw.Select((t, i) => (t, shard: shards[i * 2 < raw.Count ? 0 : 1])).ToList();
        foreach (string s in shards)
            CheckpointFiles.Write(Path.Combine(sharded, s), parts.Where(p => p.shard == s).Select(p => p.t));
        var index = new
        {
            metadata = new { total_size = raw.Sum(t => t.Data.LongLength) },
            weight_map = parts.ToDictionary(p => p.t.Name, p => p.shard),
        };
        File.WriteAllText(Path.Combine(sharded, SafetensorsCheckpoint.IndexFileName), JsonSerializer.Serialize(index));

        using (var check = new SafetensorsCheckpoint(sharded))
        {
            Assert.Equal(2, check.Files.Count);
            Assert.NotNull(check.IndexPath);
        }
        using var a = ModelLoader.Load(single, Fp32);
        using var b = ModelLoader.Load(sharded, Fp32);
        Assert.Empty(b.UnusedTensors);
        AssertSameWeights(a, b);
    }

    [Fact]
    public void Load_ShardedIndexNamesMissingShard_ThrowsSafetensorsFormatException()
    {
        string dir = TinyCheckpoint.Write(Dir("bad-index"), TinyCheckpoint.Config());
        var names = CheckpointFiles.Read(dir).Select(t => t.Name).ToList();
        var weightMap = names.ToDictionary(n => n, n => n == "lm_head.weight" ? "model-00002-of-00002.safetensors" : "model.safetensors");
        File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName), JsonSerializer.Serialize(new { weight_map = weightMap }));
        var e = Assert.Throws<SafetensorsFormatException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("model-00002-of-00002.safetensors", e.Message);
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
    public void Load_ExtraTensors_ReportedAsUnusedExceptIgnorable()
    {
        string dir = TinyCheckpoint.Write(Dir("extra"), TinyCheckpoint.Config());
        var tensors = CheckpointFiles.Read(dir);
        tensors.Add(new RawTensor("model.layers.0.extra_proj.weight", SafetensorsDType.F32, [2, 2], new byte[16]));
        tensors.Add(new RawTensor("aaa.value_head.bias", SafetensorsDType.F16, [3], new byte[6]));
        tensors.Add(new RawTensor("model.layers.1.self_attn.rotary_emb.inv_freq", SafetensorsDType.F32, [4], new byte[16]));
        CheckpointFiles.Write(Path.Combine(dir, "model.safetensors"), tensors);

        using var loaded = ModelLoader.Load(dir, Fp32);
        Assert.Equal(["aaa.value_head.bias", "model.layers.0.extra_proj.weight"], loaded.UnusedTensors);
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

    [Theory]
    [InlineData(1)]      // last byte of the data gone
    [InlineData(4000)]   // a good part of the data gone
    [InlineData(-5)]     // only 5 bytes left: not even the 8-byte header length
    public void Load_TruncatedSafetensors_ThrowsSafetensorsFormatException(int cut)
    {
        string dir = TinyCheckpoint.Write(Dir("truncated"), TinyCheckpoint.Config());
        string file = Path.Combine(dir, "model.safetensors");
        using (var stream = File.Open(file, FileMode.Open))
            stream.SetLength(cut > 0 ? stream.Length - cut : -cut);
        var e = Assert.Throws<SafetensorsFormatException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains(file, e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_EmptySafetensorsFile_ThrowsSafetensorsFormatException()
    {
        string dir = TinyCheckpoint.Write(Dir("empty"), TinyCheckpoint.Config());
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors"), []);
        Assert.Throws<SafetensorsFormatException>(() => ModelLoader.Load(dir, Fp32));
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_NoWeightFiles_ThrowsFileNotFound()
    {
        string dir = TinyCheckpoint.Write(Dir("no-weights"), TinyCheckpoint.Config());
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var e = Assert.Throws<FileNotFoundException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("model.safetensors", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_MissingDirectory_ThrowsDirectoryNotFound()
    {
        string dir = Path.Combine(_root, "does-not-exist");
        var e = Assert.Throws<DirectoryNotFoundException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains(dir, e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_BadConfig_ThrowsModelConfigExceptionBeforeReadingWeights()
    {
        string dir = TinyCheckpoint.Write(Dir("bad-config"), TinyCheckpoint.Config());
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { HiddenAct = "gelu" }));
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors"), [1, 2, 3]); // would be a format error if read
        var e = Assert.Throws<ModelConfigException>(() => ModelLoader.Load(dir, Fp32));
        Assert.Contains("hidden_act", e.Message);
        AssertGoodLoadStillWorks();
    }

    [Fact]
    public void Load_F32CheckpointAsBFloat16_ConvertsEachParameter()
    {
        string dir = TinyCheckpoint.Write(Dir("convert"), TinyCheckpoint.Config());
        using var f32 = ModelLoader.Load(dir, Fp32);
        using var bf16 = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, bf16.Model.DType);
        var a = Parameters(f32);
        foreach (var (name, p) in Parameters(bf16))
        {
            Assert.Equal(ScalarType.BFloat16, p.dtype);
            using var expected = a[name].to(ScalarType.BFloat16);
            Assert.True(Same(expected, p), $"parameter {name} differs");
        }
    }

    [Theory]
    [InlineData("float32", ScalarType.Float32)]
    [InlineData("bfloat16", ScalarType.BFloat16)]
    [InlineData(null, ScalarType.BFloat16)]
    public void Load_NoDTypeOption_UsesConfigDtypeElseBFloat16(string? configDtype, ScalarType expected)
    {
        string dir = TinyCheckpoint.Write(Dir("config-dtype"), TinyCheckpoint.Config());
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(TinyCheckpoint.Config() with { TorchDtype = configDtype }));
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU));
        Assert.Equal(expected, loaded.Model.DType);
        Assert.All(Parameters(loaded).Values, p => Assert.Equal(expected, p.dtype));
    }
}

using Xunit;
using System.Text.Json;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Tests.Support;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Loading;

public sealed partial class ModelLoaderTests : IDisposable
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

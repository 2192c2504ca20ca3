using Fiddler.Kernels.IO;
using Xunit;

namespace Fiddler.Tests.Kernels.IO;

public sealed class SafetensorsCheckpointTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private void Shard(string file, params string[] tensors) =>
        SafetensorsWriter.Write(_dir.File(file),
            tensors.Select((t, i) => (t, SafetensorsDType.F32, new[] { 2L }, (ReadOnlyMemory<byte>)RawSafetensors.Pattern(8, t.Length + i))));

    private void Index(params (string tensor, string shard)[] map) =>
        File.WriteAllText(_dir.File(SafetensorsCheckpoint.IndexFileName),
            "{\"metadata\":{\"total_size\":0},\"weight_map\":{" +
            string.Join(",", map.Select(m => $"\"{m.tensor}\":\"{m.shard}\"")) + "}}");

    private const string Shard1 = "model-00001-of-00002.safetensors";
    private const string Shard2 = "model-00002-of-00002.safetensors";

    [Fact]
    public void Open_IndexAcrossTwoShards_ResolvesEachTensorToItsShard()
    {
        Shard(Shard1, "embed", "layers.0.w");
        Shard(Shard2, "layers.1.w", "lm_head");
        Index(("embed", Shard1), ("layers.0.w", Shard1), ("layers.1.w", Shard2), ("lm_head", Shard2));

        using var ckpt = new SafetensorsCheckpoint(_dir.Path);
        Assert.Equal(2, ckpt.Files.Count);
        Assert.NotNull(ckpt.IndexPath);
        Assert.Equal(["embed", "layers.0.w", "layers.1.w", "lm_head"], ckpt.Names.Order(StringComparer.Ordinal));
        Assert.EndsWith(Shard2, ckpt.FileOf("lm_head").Path);
        Assert.EndsWith(Shard1, ckpt.FileOf("embed").Path);
        Assert.Equal(RawSafetensors.Pattern(8, "lm_head".Length + 1), ckpt.GetBytes("lm_head").ToArray());
        Assert.Equal([2L], ckpt.Info("layers.1.w").Shape);
        var dest = new byte[8];
        ckpt.CopyTo("embed", dest);
        Assert.Equal(RawSafetensors.Pattern(8, "embed".Length), dest);
    }

    [Fact]
    public void Open_SingleModelSafetensors_IgnoresOtherFiles()
    {
        Shard(SafetensorsCheckpoint.SingleFileName, "a", "b");
        Shard("unrelated.safetensors", "a");

        using var ckpt = new SafetensorsCheckpoint(_dir.Path);
        Assert.Single(ckpt.Files);
        Assert.True(ckpt.Contains("b"));
    }

    [Fact]
    public void Open_NoIndexOrModelFile_UsesAllSafetensorsFiles()
    {
        Shard("part-a.safetensors", "a");
        Shard("part-b.safetensors", "b");

        using var ckpt = new SafetensorsCheckpoint(_dir.Path);
        Assert.Equal(2, ckpt.Count);
        Assert.Null(ckpt.IndexPath);
    }

    [Fact]
    public void Open_DirectoryWithoutSafetensors_ThrowsFileNotFoundNamingDir()
    {
        File.WriteAllText(_dir.File("config.json"), "{}");
        var ex = Assert.Throws<FileNotFoundException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(_dir.Path, ex.Message);
        Assert.Contains("model.safetensors.index.json", ex.Message);
    }

    [Fact]
    public void Open_IndexNamesMissingShardFile_ThrowsNamingIndexShardAndTensor()
    {
        Shard(Shard1, "embed");
        Index(("embed", Shard1), ("lm_head", Shard2));

        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(SafetensorsCheckpoint.IndexFileName, ex.Message);
        Assert.Contains(Shard2, ex.Message);
        Assert.Contains("'lm_head'", ex.Message);
    }

    [Fact]
    public void Open_IndexNamesTensorNotInItsShard_ThrowsNamingTensorAndShard()
    {
        Shard(Shard1, "embed");
        Shard(Shard2, "lm_head");
        Index(("embed", Shard1), ("lm_head", Shard1));

        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(SafetensorsCheckpoint.IndexFileName, ex.Message);
        Assert.Contains(Shard1, ex.Message);
        Assert.Contains("'lm_head'", ex.Message);
        Assert.Equal("lm_head", ex.TensorName);
    }

    [Fact]
    public void Open_TensorInTwoShards_ThrowsNamingBothShards()
    {
        Shard(Shard1, "embed", "shared");
        Shard(Shard2, "lm_head", "shared");
        Index(("embed", Shard1), ("shared", Shard1), ("lm_head", Shard2));

        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(Shard1, ex.Message);
        Assert.Contains(Shard2, ex.Message);
        Assert.Contains("'shared'", ex.Message);
    }

    [Fact]
    public void Open_IndexShardOutsideDirectory_Throws()
    {
        Shard(Shard1, "embed");
        Index(("embed", "../" + Shard1));
        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains("outside", ex.Message);
    }

    [Fact]
    public void Open_IndexWithoutWeightMap_ThrowsNamingIndex()
    {
        Shard(Shard1, "embed");
        File.WriteAllText(_dir.File(SafetensorsCheckpoint.IndexFileName), "{\"metadata\":{}}");
        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(SafetensorsCheckpoint.IndexFileName, ex.Message);
    }

    [Fact]
    public void Open_CorruptShard_ThrowsNamingShard()
    {
        Shard(Shard1, "embed");
        File.WriteAllBytes(_dir.File(Shard2), [1, 2, 3]);
        Index(("embed", Shard1), ("lm_head", Shard2));
        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsCheckpoint(_dir.Path));
        Assert.Contains(Shard2, ex.Message);
    }

    [Fact]
    public void Info_MissingTensor_ThrowsNotFoundNamingDirAndTensor()
    {
        Shard(SafetensorsCheckpoint.SingleFileName, "a");
        using var ckpt = new SafetensorsCheckpoint(_dir.Path);

        var ex = Assert.Throws<SafetensorsTensorNotFoundException>(() => ckpt.Info("model.norm.weight"));
        Assert.IsAssignableFrom<KeyNotFoundException>(ex);
        Assert.Contains(_dir.Path, ex.Message);
        Assert.Contains("'model.norm.weight'", ex.Message);
        Assert.False(ckpt.Contains("model.norm.weight"));
    }
}

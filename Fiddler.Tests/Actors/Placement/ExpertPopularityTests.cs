using Xunit;
using Fiddler.Actors.Placement;

namespace Fiddler.Tests.Actors.Placement;

public sealed class ExpertPopularityTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fiddler-pop-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string json)
    {
        string path = Path.Combine(_dir, "popularity.json");
        File.WriteAllText(path, json);
        return path;
    }

    [Fact]
    public void SaveLoad_RecordedCounts_RoundTrip()
    {
        var pop = new ExpertPopularity("tiny", layers: 2, experts: 3);
        pop.Record(0, 2);
        pop.Record(0, 2);
        pop.Record(1, 0);
        pop.AddTokens(1);
        string path = Path.Combine(_dir, "p.json");
        pop.Save(path);

        var back = ExpertPopularity.Load(path);
        Assert.Equal(("tiny", 2, 3, 1L), (back.Model, back.Layers, back.Experts, back.Tokens));
        Assert.Equal(2, back.Count(0, 2));
        Assert.Equal(1, back.Count(1, 0));
        Assert.Equal(0, back.Count(1, 2));
        Assert.Contains("\"counts\": [\n    [0, 0, 2],\n    [1, 0, 0]\n  ]", File.ReadAllText(path));
    }

    [Fact]
    public void Load_SpecLayout_Reads()
    {
        string path = Write("""{"model": "m", "layers": 1, "experts": 2, "tokens": 5, "counts": [[7, 3]]}""");
        var pop = ExpertPopularity.Load(path);
        Assert.Equal((7L, 3L, 5L), (pop.Count(0, 0), pop.Count(0, 1), pop.Tokens));
    }

    [Fact]
    public void Load_DimsDifferFromModel_ErrorNamesBothSizes()
    {
        string path = Write("""{"model": "m", "layers": 1, "experts": 2, "tokens": 5, "counts": [[7, 3]]}""");
        var shape = new ModelShape(32, 8, 4096, 14336, 32000, 32, 8, 128, 2, false);
        var e = Assert.Throws<InvalidDataException>(() => ExpertPopularity.Load(path, shape));
        Assert.Contains("counted for 1 layers × 2 experts", e.Message);
        Assert.Contains("this model has 32 layers × 8 experts", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Theory]
    [InlineData("""{"model": "m", "layers": 2, "experts": 2, "tokens": 1, "counts": [[1, 1]]}""", "counts has 1 rows, expected one per layer (2)")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 2, "tokens": 1, "counts": [[1, 1, 1]]}""", "counts[0] has 3 entries, expected 2")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 2, "tokens": 1, "counts": [[1, -1]]}""", "counts[0][1] is -1, outside 0..")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 2, "tokens": 1, "counts": [[1, 9223372036854775807]]}""", "counts[0][1] is 9223372036854775807, outside")]
    [InlineData("""{"model": "m", "layers": 2, "experts": 2000000000, "tokens": 1, "counts": [[], []]}""", "counts[0] has 0 entries, expected 2000000000")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 2147483647, "tokens": 1, "counts": [[]]}""", "counts[0] has 0 entries")]
    [InlineData("""{"model": "m", "layers": 0, "experts": 2, "tokens": 1, "counts": []}""", "layers and experts must be > 0")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 1, "tokens": -3, "counts": [[1]]}""", "tokens must be >= 0")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 1, "tokens": 1}""", "counts has 0 rows")]
    [InlineData("""{"model": "m", "layers": 1, "experts": 2, "tokens": 1, "counts": [[1, "x"]]}""", "not a popularity file")]
    [InlineData("not json", "not a popularity file")]
    [InlineData("null", "empty popularity file")]
    public void Load_Malformed_InvalidDataWithReason(string json, string reason)
    {
        var e = Assert.Throws<InvalidDataException>(() => ExpertPopularity.Load(Write(json)));
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void Load_Missing_FileNotFound() =>
        Assert.Throws<FileNotFoundException>(() => ExpertPopularity.Load(Path.Combine(_dir, "nope.json")));

    [Fact]
    public void Uniform_AllCountsEqual()
    {
        var pop = ExpertPopularity.Uniform(3, 4);
        Assert.Equal((3, 4), (pop.Layers, pop.Experts));
        Assert.All(Enumerable.Range(0, 12), i => Assert.Equal(0, pop.Count(i / 4, i % 4)));
    }

    [Fact]
    public void Record_Concurrent_CountsEveryChoice()
    {
        var pop = new ExpertPopularity("m", 4, 8);
        Parallel.For(0, 8000, i => pop.Record(i % 4, i % 8));
        Assert.Equal(8000, Enumerable.Range(0, 32).Sum(i => pop.Count(i / 8, i % 8)));
    }

    [Fact]
    public void Record_OutOfRange_Throws()
    {
        var pop = new ExpertPopularity("m", 2, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => pop.Record(2, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pop.Record(0, -1));
    }
}

using Xunit;
using System.Text.Json;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

public sealed class LatencyModelTests
{
    // The H100 host's PyTorch CPU expert (NOTES.md): 6.5 ms at 1 token, 8.5 / 17.5 / 27 ms at 64 / 128 / 256.
    private static readonly LatencyModel Cpu = LatencyModel.FromPoints((64, 8.5), (1, 6.5), (256, 27), (128, 17.5));

    [Theory]
    [InlineData(1, 6.5)]
    [InlineData(64, 8.5)]
    [InlineData(96, 13.0)]      // halfway between 64 and 128
    [InlineData(192, 22.25)]    // halfway between 128 and 256
    [InlineData(256, 27.0)]
    [InlineData(512, 46.0)]     // last slope 9.5 ms / 128 tokens continued for 256 more
    public void Ms_Between_InterpolatesAndExtrapolates(int tokens, double ms) => Assert.Equal(ms, Cpu.Ms(tokens), 9);

    [Fact]
    public void Points_UnsortedInput_SortedByTokens() => Assert.Equal([1, 64, 128, 256], Cpu.Points.Select(p => p.Tokens));

    [Fact]
    public void Ms_BelowFirstPoint_ClampsToFirstValue()
    {
        var m = LatencyModel.FromPoints((4, 2.0), (8, 3.0));
        Assert.Equal(2.0, m.Ms(1));
        Assert.Equal(2.0, m.Ms(0));
    }

    [Fact]
    public void Ms_LastSegmentSlopesDown_ExtrapolatesFlat()
    {
        var m = LatencyModel.FromPoints((1, 5.0), (16, 4.0));
        Assert.Equal(4.0, m.Ms(16));
        Assert.Equal(4.0, m.Ms(1000));
        Assert.Equal(5.0 - 7.0 / 15, m.Ms(8), 9); // interpolation still follows the measurement
    }

    [Fact]
    public void Ms_SinglePoint_Constant()
    {
        var m = LatencyModel.Constant(6.45);
        Assert.Equal(6.45, m.Ms(1));
        Assert.Equal(6.45, m.Ms(4096));
    }

    [Fact]
    public void Linear_FixedPlusPerToken()
    {
        var m = LatencyModel.Linear(fixedMs: 1.0, msPerToken: 0.5);
        Assert.Equal(1.5, m.Ms(1), 9);
        Assert.Equal(51.0, m.Ms(100), 9);
    }

    [Fact]
    public void Fit_RepeatedSamples_TakesMedians()
    {
        var m = LatencyModel.Fit([(1, 4.0), (1, 40.0), (1, 4.2), (8, 5.0), (8, 6.0)]);
        Assert.Equal(2, m.Points.Count);
        Assert.Equal(4.2, m.Ms(1), 9);
        Assert.Equal(5.5, m.Ms(8), 9);
    }

    [Theory]
    [InlineData(0, 1.0, "tokens must be >= 1")]
    [InlineData(1, -1.0, "ms must be finite and >= 0")]
    [InlineData(1, double.NaN, "ms must be finite and >= 0")]
    [InlineData(1, double.PositiveInfinity, "ms must be finite and >= 0")]
    public void Constructor_BadPoint_Throws(int tokens, double ms, string reason)
    {
        var e = Assert.Throws<ArgumentException>(() => LatencyModel.FromPoints((tokens, ms)));
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void Constructor_DuplicateTokensOrEmpty_Throws()
    {
        Assert.Contains("two latency points for 4 tokens",
            Assert.Throws<ArgumentException>(() => LatencyModel.FromPoints((4, 1.0), (4, 2.0))).Message);
        Assert.Throws<ArgumentException>(() => LatencyModel.FromPoints());
    }

    [Fact]
    public void Json_RoundTrip_KeepsPoints()
    {
        string json = JsonSerializer.Serialize(Cpu);
        Assert.StartsWith("""{"points":[{"tokens":1,"ms":6.5},""", json);
        var back = JsonSerializer.Deserialize<LatencyModel>(json)!;
        Assert.Equal(Cpu.Points, back.Points);
        Assert.Equal(Cpu.Ms(300), back.Ms(300));
    }
}

using Xunit;
using Fiddler.Actors.Placement;

namespace Fiddler.Tests.Actors.Placement;

public sealed class MemoryBudgetTests
{
    [Theory]
    [InlineData("24GiB", 24L << 30)]
    [InlineData("24G", 24L << 30)]
    [InlineData("24 gib", 24L << 30)]
    [InlineData("512MiB", 512L << 20)]
    [InlineData("512M", 512L << 20)]
    [InlineData("1.5TiB", 3L << 39)]
    [InlineData("80GB", 80_000_000_000L)]
    [InlineData("0.5GB", 500_000_000L)]
    [InlineData("1KB", 1000L)]
    [InlineData("4KiB", 4096L)]
    [InlineData("1073741824", 1L << 30)]
    [InlineData("1024B", 1024L)]
    [InlineData(" 2 TB ", 2_000_000_000_000L)]
    [InlineData("0", 0L)]
    [InlineData(".5GiB", 1L << 29)]
    [InlineData("1.5e1GiB", 15L << 30)]
    [InlineData("2E3MB", 2_000_000_000L)]
    public void Parse_ValidSizes_ReturnsBytes(string text, long expected) => Assert.Equal(expected, MemoryBudget.Parse(text));

    [Theory]
    [InlineData("-1GiB", "must not be negative")]
    [InlineData("- 24G", "must not be negative")]
    [InlineData("24 parsecs", "unknown unit 'parsecs'")]
    [InlineData("24XB", "unknown unit 'XB'")]
    [InlineData("lots", "not a number with a unit")]
    [InlineData("", "not a number with a unit")]
    [InlineData("1.2.3GiB", "not a number with a unit")]
    [InlineData("NaN", "not a number with a unit")]
    [InlineData("GiB", "not a number with a unit")]
    [InlineData("99999999TiB", "too large")]
    [InlineData("1e30GiB", "too large")]
    [InlineData("1e400", "too large")]
    [InlineData("1e", "unknown unit 'e'")]
    public void Parse_Nonsense_ThrowsWithReason(string text, string reason)
    {
        var e = Assert.Throws<ArgumentException>(() => MemoryBudget.Parse(text));
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void TryParse_Null_ReturnsFalseWithError()
    {
        Assert.False(MemoryBudget.TryParse(null, out long bytes, out string? error));
        Assert.Equal(0, bytes);
        Assert.NotNull(error);
    }

    [Fact]
    public void Format_Bytes_GiBWithUpToTwoDecimals()
    {
        Assert.Equal("24 GiB", MemoryBudget.Format(24L << 30));
        Assert.Equal("1.5 GiB", MemoryBudget.Format(3L << 29));
        Assert.Equal("10 MiB", MemoryBudget.Format(10L << 20));      // not "0.01 GiB"
        Assert.Equal("0.01 MiB", MemoryBudget.Format(10L << 10));    // not "0 GiB"
        Assert.Equal("0 GiB", MemoryBudget.Format(0));
        Assert.Equal("3.0 GiB", MemoryBudget.Format1(3_211_272_192));
    }
}

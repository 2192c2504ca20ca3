using Fiddler.Host.Serving.Load;
using Xunit;

namespace Fiddler.Tests.Host.Serving.Load;

public sealed class PercentilesTests
{
    private static readonly double[] OneToTen = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

    [Theory]
    [InlineData(50, 5)]
    [InlineData(90, 9)]
    [InlineData(99, 10)]
    [InlineData(100, 10)]
    [InlineData(10, 1)]
    [InlineData(11, 2)]
    [InlineData(0.1, 1)]
    public void NearestRank_OneToTen_ValueAtCeilingRank(double p, double expected)
        => Assert.Equal(expected, Percentiles.NearestRank(OneToTen, p));

    [Fact]
    public void NearestRank_HundredSamples_P99IsTheNinetyNinth()
    {
        var sorted = Enumerable.Range(1, 100).Select(i => (double)i).ToArray();
        Assert.Equal(99, Percentiles.NearestRank(sorted, 99));
        Assert.Equal(50, Percentiles.NearestRank(sorted, 50));
        Assert.Equal(90, Percentiles.NearestRank(sorted, 90));
    }

    [Fact]
    public void NearestRank_OneSample_EveryPercentileIsIt()
    {
        Assert.Equal(7, Percentiles.NearestRank([7.0], 1));
        Assert.Equal(7, Percentiles.NearestRank([7.0], 99));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    [InlineData(100.5)]
    [InlineData(double.NaN)]
    public void NearestRank_PercentileOutOfRange_Throws(double p)
        => Assert.Throws<ArgumentOutOfRangeException>(() => Percentiles.NearestRank(OneToTen, p));

    [Fact]
    public void NearestRank_NoSamples_Throws()
        => Assert.Throws<ArgumentException>(() => Percentiles.NearestRank([], 50));

    [Fact]
    public void Summarize_UnsortedWithNonFinite_SortsAndDropsThem()
    {
        var s = Percentiles.Summarize([10, double.NaN, 3, 7, double.PositiveInfinity, 1]);
        Assert.Equal(new LatencySummary(4, 3, 10, 10, 10), s);
    }

    [Fact]
    public void Summarize_Empty_NullPercentiles()
        => Assert.Equal(LatencySummary.Empty, Percentiles.Summarize([]));
}

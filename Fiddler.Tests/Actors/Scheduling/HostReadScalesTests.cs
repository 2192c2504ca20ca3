using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

public sealed class HostReadScalesTests
{
    [Fact]
    public void Scales_AreTheMedianRateOverEachExpertsRate()
    {
        // Rates 80, 120, 125, 130 GB/s: median 122.5.
        var s = new HostReadScales(2, 4, [(0, 1, 80), (0, 3, 120), (1, 0, 125), (1, 2, 130)]);
        Assert.Equal(122.5, s.ReferenceRate, 9);
        Assert.Equal(122.5 / 80, s.Of(0, 1), 9);
        Assert.Equal(122.5 / 130, s.Of(1, 2), 9);
        Assert.Equal(1.0, s.Of(0, 0));  // not measured (resident)
        Assert.Equal(1.0, s.Of(7, 0));  // out of range
        Assert.Equal(4, s.Measured);
        Assert.Equal(122.5 / 80, s.Slowest, 9);
        Assert.Equal(0.25, s.SlowShare, 9); // only the 80 GB/s one is ≥ 1.2 × the median's time
    }

    [Fact]
    public void Uneven_OnlyWhenAtLeastFivePercentReadSlowly()
    {
        // 40 experts: one 1.3× slower is 2.5 % (noise-sized); three are 7.5 %.
        (int, int, double)[] Rates(int slow) => [.. Enumerable.Range(0, 40).Select(i => (i / 8, i % 8, i < slow ? 100.0 : 130.0))];
        Assert.False(new HostReadScales(5, 8, Rates(1)).Uneven);
        Assert.True(new HostReadScales(5, 8, Rates(3)).Uneven);
        Assert.Contains("uneven", new HostReadScales(5, 8, Rates(3)).ToString());
    }

    [Fact]
    public void Scales_OutlierIsClamped()
    {
        var s = new HostReadScales(1, 3, [(0, 0, 1), (0, 1, 100), (0, 2, 1000)]);
        Assert.Equal(HostReadScales.MaxScale, s.Of(0, 0));
        Assert.Equal(HostReadScales.MinScale, s.Of(0, 2));
    }

    [Fact]
    public void Scales_BadInput_ClearErrors()
    {
        Assert.Throws<ArgumentException>(() => new HostReadScales(1, 2, []));
        Assert.Contains("twice", Assert.Throws<ArgumentException>(() => new HostReadScales(1, 2, [(0, 1, 5), (0, 1, 6)])).Message);
        Assert.Contains("outside", Assert.Throws<ArgumentOutOfRangeException>(() => new HostReadScales(1, 2, [(0, 2, 5)])).Message);
        Assert.Contains("not a positive", Assert.Throws<ArgumentOutOfRangeException>(() => new HostReadScales(1, 2, [(0, 1, 0)])).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostReadScales(1, 2, [(0, 1, double.NaN)]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostReadScales(0, 2, [(0, 1, 5)]));
    }
}

using Fiddler.Host.Cli;
using Fiddler.Kernels.Offload;
using Xunit;

namespace Fiddler.Tests.Host;

// --ceiling-windows' arithmetic, on synthetic windows and probes.
public sealed class BenchCeilingWindowsTests
{
    private const double ExpertBytesPerToken = 32 * 2 * 352e6; // Mixtral-8x7B: 32 layers × top-2 × 352 MB

    [Fact]
    public void Pearson_KnownSeries()
    {
        Assert.Equal(1, BenchRun.Pearson([1, 2, 3, 4], [2, 4, 6, 8])!.Value, 12);
        Assert.Equal(-1, BenchRun.Pearson([1, 2, 3, 4], [8, 6, 4, 2])!.Value, 12);
        // x = 1..5, y = 2, 4, 5, 4, 5: r = 6 / sqrt(10 · 6)
        Assert.Equal(6 / Math.Sqrt(60), BenchRun.Pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])!.Value, 12);
        Assert.Null(BenchRun.Pearson([1, 2], [3, 4]));            // too few points
        Assert.Null(BenchRun.Pearson([1, 2, 3], [5, 5, 5]));      // no spread
        Assert.Throws<ArgumentException>(() => BenchRun.Pearson([1, 2, 3], [1, 2]));
    }

    [Fact]
    public void Rounds_WindowsThatFollowTheirCeilings_CorrelateWithASteadyFraction()
    {
        // Each probe's concurrent rate 120, 100, 130 GB/s; each window's hit rate 0.2, 0.25, 0.3 (read after that window,
        // before its probe); the windows run at 0.8 of each ceiling.
        double[] concurrent = [120, 100, 130];
        double Miss(int i) => 0.8 - 0.05 * i;
        double Ceiling(int i) => concurrent[i] * 1e9 / (Miss(i) * ExpertBytesPerToken);
        int window = 0, probe = 0;
        var cw = BenchRun.MeasureCeilingWindows(3,
            () => new BenchRun.WindowStats(0.8 * Ceiling(window), 0.6, 0.3, KernelGBps: 80 + 2 * window++),
            () => { Assert.Equal(window, probe + 1); return 1 - Miss(window - 1); }, ExpertBytesPerToken,
            () => { double read = 80 + 2 * probe; return new LaneCeiling.Result(110, 54, read, concurrent[probe++] - read, 200); },
            _ => Assert.Fail("nothing to log"));
        Assert.Equal(3, cw.Rounds.Length);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Miss(i) * ExpertBytesPerToken, cw.Rounds[i].OffloadedBytesPerToken, 1);
            Assert.Equal(Ceiling(i), cw.Rounds[i].CeilingTokS!.Value, 9);
            Assert.Equal(0.8, cw.Rounds[i].Fraction!.Value, 9);
            Assert.Equal(1, cw.Rounds[i].KernelOfProbe!.Value, 9);
        }
        Assert.Equal(1, cw.Correlation!.Value, 9);
        Assert.Equal(1, cw.KernelCorrelation!.Value, 9);
    }

    [Fact]
    public void Rounds_WithoutAProbe_KeepTheirTokSAndSaySo()
    {
        var log = new List<string>();
        int calls = 0;
        var cw = BenchRun.MeasureCeilingWindows(3, () => new BenchRun.WindowStats(5 + calls, 0.5, 0.3), () => 0.2, ExpertBytesPerToken,
            () => calls++ == 1 ? throw new InvalidOperationException("staging slot 0 is in use") : null, log.Add);
        Assert.Equal([5.0, 6.0, 7.0], cw.Rounds.Select(r => r.Window.TokS));
        Assert.All(cw.Rounds, r => { Assert.Null(r.Ceiling); Assert.Null(r.Fraction); Assert.Null(r.KernelOfProbe); });
        Assert.Null(cw.Correlation);
        Assert.Contains(log, l => l.Contains("round 2's lane ceiling not measured: staging slot 0 is in use"));
        Assert.Contains(log, l => l.Contains("no lane ceiling could be measured"));
    }

    [Fact]
    public void Rounds_BadArguments_Throw()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => BenchRun.MeasureCeilingWindows(0, () => default, () => 0, 1, () => null, _ => { }));
        Assert.Throws<ArgumentOutOfRangeException>(() => BenchRun.MeasureCeilingWindows(1, () => default, () => 0, 0, () => null, _ => { }));
    }
}

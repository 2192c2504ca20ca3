using Xunit;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Offload;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

public sealed class HostExpertReadsTests
{
    [Fact]
    public void Result_SummarisesTheExpertsBestPasses()
    {
        // Experts 0-2 slow in both passes (as memory on a slower node would be), 3-5 fast.
        var r = new HostExpertReads.Result([[50, 52, 51, 100, 98, 99], [49, 54, 50, 101, 99, 97]]);
        Assert.Equal(6, r.Experts);
        Assert.Equal([50, 54, 51, 101, 99, 99], r.Best);
        Assert.Equal(50, r.Quantile(0));
        Assert.Equal(101, r.Quantile(1));
        Assert.Equal(99, r.Quantile(0.5)); // nearest rank: index 2.5 of 50, 51, 54, 99, 99, 101 rounds up
        Assert.Equal(52.5, r.MedianOf(0, 4)); // 50, 51, 54, 101 → (51 + 54) / 2
        Assert.Equal(51, r.MedianOf(0, 3));
        Assert.Equal(99, r.MedianOf(3, 99)); // clamped to the experts there are
        Assert.True(double.IsNaN(r.MedianOf(6, 9)));
        Assert.True(r.PassCorrelation > 0.95, $"correlation {r.PassCorrelation}");
        Assert.Throws<ArgumentOutOfRangeException>(() => r.Quantile(1.5));
        // One pass, or no spread: no correlation to report.
        Assert.True(double.IsNaN(new HostExpertReads.Result([[1, 2, 3]]).PassCorrelation));
        Assert.True(double.IsNaN(new HostExpertReads.Result([[5, 5], [1, 2]]).PassCorrelation));
        // Noise alone: the passes disagree.
        Assert.True(new HostExpertReads.Result([[1, 2, 3, 4], [4, 3, 2, 1]]).PassCorrelation < -0.9);
    }

    [Fact]
    public unsafe void Measure_TimesEachExpertPerPass_OrNullWhenTooSmallToTime()
    {
        using var pool = new CpuWorkerPool(threads: 2);
        using var scope = NewDisposeScope();
        // 1024 × 1024 bf16 = 2 MiB per matrix: two whole 1 MiB chunks each.
        var big = Enumerable.Range(0, 3).Select(_ => HostExpert.FromTensors(ones(1024, 1024, ScalarType.BFloat16), ones(1024, 1024, ScalarType.BFloat16),
            ones(1024, 1024, ScalarType.BFloat16), requirePinned: false)).ToArray();
        var r = HostExpertReads.Measure(pool, big, passes: 3);
        Assert.NotNull(r);
        Assert.Equal(3, r.PassGBps.Length);
        Assert.All(r.PassGBps, p => Assert.Equal(3, p.Length));
        Assert.All(r.PassGBps.SelectMany(p => p), v => Assert.True(v > 0 && double.IsFinite(v)));
        var tiny = new[] { HostExpert.FromTensors(ones(64, 64, ScalarType.BFloat16), ones(64, 64, ScalarType.BFloat16), ones(64, 64, ScalarType.BFloat16), requirePinned: false) };
        Assert.Null(HostExpertReads.Measure(pool, tiny));
        Assert.Null(HostExpertReads.Measure(pool, []));
        Assert.Throws<ArgumentOutOfRangeException>(() => HostExpertReads.Measure(pool, big, passes: 0));
    }
}

using Fiddler.Actors.Placement;
using Fiddler.Kernels.Config;
using Xunit;

namespace Fiddler.Tests.Actors.Placement;

public class DeviceMemoryFitTests
{
    private const long GiB = 1L << 30;

    [Fact]
    public void Check_PlanWithRoomForTheMargin_Passes()
    {
        DeviceMemoryFit.Check(24 * GiB, 79 * GiB, 80 * GiB, "NVIDIA H100 80GB HBM3", budgeted: true);
        DeviceMemoryFit.Check(79 * GiB - DeviceMemoryFit.MarginBytes, 79 * GiB, 80 * GiB, "gpu", budgeted: true); // exactly full
    }

    [Fact]
    public void Check_BudgetAboveTheFreeMemory_SaysWhatFits()
    {
        var e = Assert.Throws<PlacementException>(() => DeviceMemoryFit.Check(200 * GiB, (long)(78.6 * GiB), 80 * GiB, "NVIDIA H100 80GB HBM3", budgeted: true));
        Assert.Contains("NVIDIA H100 80GB HBM3", e.Message);
        Assert.Contains("78.6 GiB free", e.Message);
        Assert.Contains("(+ a 0.25 GiB margin)", e.Message);
        Assert.Contains("--gpu-budget 78GiB or less", e.Message); // 78.6 − the margin, floored
    }

    [Fact]
    public void Check_MarginTipsItOver_Throws()
    {
        // The plan alone fits; with the margin it does not.
        Assert.Throws<PlacementException>(() => DeviceMemoryFit.Check(79 * GiB - DeviceMemoryFit.MarginBytes + 1, 79 * GiB, 80 * GiB, "gpu", budgeted: true));
    }

    [Fact]
    public void Check_WholeModelTooBig_SuggestsABudget()
    {
        var shape = ModelShape.From(MixtralConfig.Named("mixtral-8x7b"), 2);
        long all = DeviceMemoryFit.AllOnGpuBytes(shape, 4096, 1);
        Assert.InRange(all / (double)GiB, 89.0, 89.6); // 87.0 GiB of weights + 0.5 KV + 1.8 activations
        var e = Assert.Throws<PlacementException>(() => DeviceMemoryFit.Check(all, 79 * GiB, 80 * GiB, "cuda:0", budgeted: false));
        Assert.Contains("give --gpu-budget (at most 78GiB)", e.Message);
    }

    [Fact]
    public void ContextThatFits_IsTheLastLengthWhoseCacheAndActivationsFit()
    {
        var shape = ModelShape.From(MixtralConfig.Named("mixtral-8x7b"), 2);
        long Need(long t) => shape.KvCacheBytes(t) + shape.ActivationReserveBytes(t) + DeviceMemoryFit.MarginBytes;
        // Mixtral-8x7B: 128 KiB of KV cache per position, and a prompt of that length needs its activations too (256 KiB
        // per token, 24 B per token², libtorch's 448 MiB): 3 GiB free holds ~4.9k positions (0.6 GiB of cache).
        int fits = DeviceMemoryFit.ContextThatFits(shape, 3 * GiB, 32768);
        Assert.True(Need(fits) <= 3 * GiB && Need(fits + 1) > 3 * GiB, $"{fits}");
        Assert.InRange(fits, 4500, 5200);
        // Room for the whole context: the model's own; none: 0.
        Assert.Equal(32768, DeviceMemoryFit.ContextThatFits(shape, 80 * GiB, 32768));
        Assert.Equal(0, DeviceMemoryFit.ContextThatFits(shape, Need(1) - 1, 32768));
        Assert.Equal(1, DeviceMemoryFit.ContextThatFits(shape, Need(1), 32768));
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMemoryFit.ContextThatFits(shape, GiB, 0));
    }

    [Fact]
    public void Check_NoFreeMemory_SuggestsNothingNegative()
    {
        var e = Assert.Throws<PlacementException>(() => DeviceMemoryFit.Check(GiB, 100L << 20, 80 * GiB, "gpu", budgeted: true));
        Assert.Contains("too little is free for any budget", e.Message);
        Assert.DoesNotContain("0GiB", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMemoryFit.Check(-1, GiB, GiB, "gpu", budgeted: true));
    }
}

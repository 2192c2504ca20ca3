using Xunit;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Offload;
using Fiddler.Tests.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Engine;

public sealed class RouterSchedulerReadScalesTests
{
    private static readonly ExpertWork[] TwoMisses = [new(2, 1, false), new(6, 1, false)];

    [Fact]
    public void Decide_WithReadScales_SlowExpertLeavesTheCpuLane()
    {
        var scheduler = new RouterScheduler(new ExpertRouter(HardwareProfileTests.H100()));
        var plain = scheduler.Decide(3, TwoMisses);
        // Layer 3's expert 6 reads at half the median speed; expert 2 at the median.
        scheduler.ReadScales = new HostReadScales(8, 8, [(3, 2, 120), (3, 6, 60), (4, 6, 120)]);
        var scaled = scheduler.Decide(3, TwoMisses);

        double CpuShareOf(IReadOnlyList<ExpertRoute> routes, int i) => routes[i].UsesCpu ? routes[i].CpuShare : 0;
        Assert.True(CpuShareOf(scaled, 1) < CpuShareOf(scaled, 0), $"slow expert's CPU share {CpuShareOf(scaled, 1)} vs fast {CpuShareOf(scaled, 0)}");
        Assert.True(CpuShareOf(scaled, 1) <= CpuShareOf(plain, 1));

        // Switched off (bench --ab-read-scales), the plan is the unscaled one again.
        scheduler.UseReadScales = false;
        Assert.Equal(plain, scheduler.Decide(3, TwoMisses));
        // Another layer's experts keep their own scales: layer 5 was not measured.
        scheduler.UseReadScales = true;
        Assert.Equal(plain, scheduler.Decide(5, TwoMisses));
    }
}

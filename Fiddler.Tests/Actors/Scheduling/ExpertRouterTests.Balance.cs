using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

// RouterOptions.BalanceLastLane: balancing decode layers by which lane ended last.
public sealed partial class ExpertRouterTests
{
    /// <summary>
    /// Decode layers of two misses (one CPU expert, one split) whose CPU lane is skewed: as planned in 80 % of layers,
    /// 30 % slower in the others (a straggling worker); the device lane as calibrated ±2 %. Returns the share of the last
    /// 2000 layers whose CPU lane ended last, and the last plan's CPU share of the split expert.
    /// </summary>
    private static (double CpuLastShare, double SplitCpuShare, double MeanLayerMs, ExpertRouter Router) SkewedLanes(bool balance)
    {
        var router = new ExpertRouter(Host(cpu1: 2.9), new RouterOptions(RoutingMode.Auto, 2, 16, SplitExperts: true, CpuContention: 1, BalanceLastLane: balance));
        var rng = new Random(7);
        int cpuLast = 0;
        double layerMs = 0;
        LayerPlan plan = null!;
        for (int i = 0; i < 6000; i++)
        {
            plan = router.Decide([Miss(5), Miss(6)]);
            double cpu = plan.CpuLaneMs / plan.CpuFactor * (rng.NextDouble() < 0.2 ? 1.3 : 1.0); // the truth: contention 1
            double device = plan.GpuLaneMs / plan.TransferFactor * (0.98 + 0.04 * rng.NextDouble());
            // The factors learn the lanes' means (CPU ×1.06), as in the engine.
            router.Account(plan, [], observedCpuLaneMs: cpu, observedDeviceLaneMs: device, cpuEndedLast: cpu > device);
            if (i < 4000) continue;
            if (cpu > device) cpuLast++;
            layerMs += Math.Max(cpu, device);
        }
        var split = plan.Decisions.Single(d => d.Placement == ExpertPlacement.Split);
        return (cpuLast / 2000.0, split.CpuShare, layerMs / 2000, router);
    }

    [Fact]
    public void Account_BalanceLastLane_SettlesWhereTheCpuEndsLastInTheTargetShare()
    {
        // Per expert: CPU 2.9 ms, copy 6.45 ms → a byte moved to the CPU costs 0.45× what it saves on the copy, so the
        // least expected finish has the CPU lane ending last in 6.45 / 9.35 = 69 % of the layers.
        double q = ExpertRouter.LastLaneTarget(2.9, 6.45);
        Assert.Equal(6.45 / 9.35, q, 9);
        var off = SkewedLanes(balance: false);
        var on = SkewedLanes(balance: true);
        Assert.Equal(1.0, off.Router.LaneBalance);                         // off: only counted
        Assert.InRange(off.CpuLastShare, 0.1, 0.5);                        // balanced means: the device ends most layers
        Assert.InRange(on.CpuLastShare, q - 0.06, q + 0.06);
        Assert.True(on.Router.LaneBalance < 1, $"balance {on.Router.LaneBalance}"); // the CPU is planned faster ...
        Assert.True(on.SplitCpuShare > off.SplitCpuShare + 0.005, $"{on.SplitCpuShare} vs {off.SplitCpuShare}"); // ... and takes more rows
        Assert.True(on.MeanLayerMs < off.MeanLayerMs * 0.99, $"{on.MeanLayerMs} vs {off.MeanLayerMs} ms"); // and the layers end sooner
        var (layers, share) = on.Router.LaneOrder;
        Assert.Equal(6000, layers);
        Assert.InRange(share, 0.4, 0.8);
        Assert.Contains("lane ends", on.Router.Report());
        on.Router.ResetStats();
        Assert.Equal((0L, 0.0), on.Router.LaneOrder);
    }

    [Fact]
    public void BalanceLastLane_SwitchedOff_PlansWithoutTheLearnedMultiplierAndKeepsIt()
    {
        var on = SkewedLanes(balance: true).Router;
        double learned = on.LaneBalance;
        Assert.True(learned < 1, $"balance {learned}");
        var withBalance = on.Decide([Miss(5), Miss(6)]);
        on.BalanceLastLane = false;
        var without = on.Decide([Miss(5), Miss(6)]);
        // Off: the planned CPU factor loses the multiplier (the CPU is planned slower), the multiplier itself is kept ...
        Assert.Equal(withBalance.CpuFactor / learned, without.CpuFactor, 9);
        Assert.Equal(learned, on.LaneBalance);
        // ... and not learned while off.
        on.Account(without, [], observedCpuLaneMs: without.CpuLaneMs * 2, observedDeviceLaneMs: without.GpuLaneMs, cpuEndedLast: true);
        Assert.Equal(learned, on.LaneBalance);
        Assert.Contains("(off)", on.Report());
        var offAgain = on.Decide([Miss(5), Miss(6)]);
        on.BalanceLastLane = true;
        Assert.Equal(offAgain.CpuFactor * learned, on.Decide([Miss(5), Miss(6)]).CpuFactor, 9); // back on: applied again
        Assert.DoesNotContain("(off)", on.Report());
    }

    [Fact]
    public void SaveAndRestoreLearned_PutsBackTheFactorsAndTheBalance()
    {
        var router = SkewedLanes(balance: true).Router;
        var saved = router.SaveLearned();
        var before = router.Decide([Miss(5), Miss(6)]);
        Assert.True(saved.Balance < 1 && saved.Contended[0] != 1, $"{saved}");
        // Teach it something else: a CPU lane twice as slow as planned, many times over.
        for (int i = 0; i < 200; i++)
        {
            var p = router.Decide([Miss(5), Miss(6)]);
            router.Account(p, [], observedCpuLaneMs: p.CpuLaneMs / p.CpuFactor * 2.5, observedDeviceLaneMs: p.GpuLaneMs, cpuEndedLast: true);
        }
        Assert.NotEqual(saved.Contended[0], router.CpuFactors.Contended);
        router.RestoreLearned(saved);
        Assert.Equal(saved.Contended[0], router.CpuFactors.Contended);
        Assert.Equal(saved.Balance, router.LaneBalance);
        Assert.Equal(before.CpuFactor, router.Decide([Miss(5), Miss(6)]).CpuFactor, 12);
        saved.Contended[0] = 99; // a copy: changing it does not reach the router
        Assert.NotEqual(99, router.CpuFactors.Contended);
        Assert.Throws<ArgumentException>(() => router.RestoreLearned(saved with { Calm = [1] }));
    }

    [Fact]
    public void LastLaneTarget_IsBoundedAndHalfWithoutSpeeds()
    {
        Assert.Equal(0.5, ExpertRouter.LastLaneTarget(3, 3), 9);
        Assert.Equal(0.8, ExpertRouter.LastLaneTarget(1, 100), 9);
        Assert.Equal(0.2, ExpertRouter.LastLaneTarget(100, 1), 9);
        Assert.Equal(0.5, ExpertRouter.LastLaneTarget(0, 6.45), 9);
        Assert.Throws<ArgumentException>(() => new ExpertRouter(Host(), new RouterOptions(BalanceRate: 0)));
    }
}

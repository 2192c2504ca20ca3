using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

// The batch regime (prefill, beams): factors learned apart from decode, at their own rate.
public sealed partial class ExpertRouterTests
{
    [Fact]
    public void Account_PrefillLayersSlowerThanPlanned_LearnBatchFactorsApartFromDecode()
    {
        // A prefill-like layer: six misses of 64 tokens each (CPU 2.9 + 6.3 = 9.2 ms per expert, copy 6.45 + 0.15).
        var host = Host(cpu1: 2.9);
        var router = SplitRouter(host, contention: 1.25);
        ExpertLoad[] layer = [.. Enumerable.Range(0, 6).Select(e => Miss(e, tokens: 64))];
        var before = router.Decide(layer);
        int copiedBefore = before.Count(ExpertPlacement.Transfer);
        // In the engine the CPU lane runs 2× its calibrated time beside the copies; the copies take their calibrated time.
        for (int i = 0; i < 400; i++)
        {
            var plan = router.Decide(layer);
            router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs / plan.CpuFactor * 2.0, observedDeviceLaneMs: plan.GpuLaneMs / plan.TransferFactor);
        }
        var batch = router.BatchFactors;
        Assert.Equal(2.0, batch.Contended, 3);
        Assert.Equal(1.0, batch.Transfer, 3);
        var after = router.Decide(layer);
        Assert.True(after.Count(ExpertPlacement.Transfer) > copiedBefore, $"{after.Count(ExpertPlacement.Transfer)} vs {copiedBefore} copied");
        Assert.Equal(2.0, after.CpuFactor, 3);
        // Decode-sized layers keep their own factors (the configured start) and plans.
        Assert.Equal((1.0, 1.25), router.CpuFactors);
        Assert.Equal(1.0, router.TransferFactor);
        Assert.Equal(1.25, router.Evaluate([Miss(5), Miss(6)], e => e.Expert == 6).CpuFactor, 9);
    }

    [Fact]
    public void Account_BatchLayersLearnAtTheirOwnRate_OnePrefillGetsMostOfTheWay()
    {
        // The CPU lane runs 1.6× calibrated beside the copies; the router starts at 1.25. One 32-layer prefill at the batch
        // rate (0.25 per layer, each sample limited to ×1.5) closes the gap to within 1 %; at the decode rate (0.05) a
        // fifth of it would remain: most of that prompt's layers would have run on stale factors.
        ExpertLoad[] prefill = [.. Enumerable.Range(0, 6).Select(e => Miss(e, tokens: 64))];
        ExpertLoad[] decode = [Miss(5), Miss(6)];
        double Learn(RouterOptions options, ExpertLoad[] layer)
        {
            var router = new ExpertRouter(Host(cpu1: 2.9), options);
            for (int i = 0; i < 32; i++)
            {
                var plan = router.Decide(layer);
                Assert.True(plan.HasTransfers && plan.HasCpuWork);
                router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs / plan.CpuFactor * 1.6);
            }
            return layer == prefill ? router.BatchFactors.Contended : router.CpuFactors.Contended;
        }
        var defaults = RouterOptions.Default with { CpuContention = 1.25 };
        Assert.Equal(0.25, defaults.BatchAdaptRate);
        Assert.InRange(Learn(defaults, prefill), 1.584, 1.6);
        Assert.InRange(Learn(defaults with { BatchAdaptRate = 0.05 }, prefill), 1.25, 1.55);
        // Decode-sized layers keep the decode rate: 32 layers leave about a fifth of the gap.
        double decodeFactor = Learn(defaults, decode);
        Assert.InRange(decodeFactor, 1.5, 1.55);
        Assert.Equal(decodeFactor, Learn(defaults with { BatchAdaptRate = 1 }, decode), 9);
        Assert.Throws<ArgumentException>(() => new ExpertRouter(Host(cpu1: 2.9), defaults with { BatchAdaptRate = 0 }));
    }
}

using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

// The batch regimes (prefill, beams): factors learned apart from decode and per batch size, at their own rate.
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
        var batch = Size(router, 64);
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
            return layer == prefill ? Size(router, 64).Contended : router.CpuFactors.Contended;
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

    [Fact]
    public void Account_EachBatchSizeLearnsItsOwnFactors()
    {
        // Prompts of three sizes alternate, as a server's requests do; the CPU lane runs 1.3× / 1.8× / 2.4× its calibrated
        // time beside the copies at ≤ 16 / ≤ 64 / more tokens per expert. Each size settles at its own factor: with one
        // shared factor, every prompt would plan with the last size's.
        var router = SplitRouter(Host(cpu1: 2.9), contention: 1.25);
        (int Tokens, double Slowdown)[] sizes = [(12, 1.3), (48, 1.8), (200, 2.4)];
        for (int round = 0; round < 40; round++)
            foreach (var (tokens, slowdown) in sizes)
                for (int layer = 0; layer < 8; layer++)
                {
                    var plan = router.Decide([.. Enumerable.Range(0, 6).Select(e => Miss(e, tokens))]);
                    Assert.True(plan.HasTransfers && plan.HasCpuWork, $"{tokens} tokens: both lanes");
                    router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs / plan.CpuFactor * slowdown);
                }
        Assert.Equal([16, 64, int.MaxValue], ExpertRouter.BatchSizes);
        Assert.Equal([16, 64, int.MaxValue], router.BatchFactors.Select(b => b.MaxTokens));
        foreach (var (tokens, slowdown) in sizes)
        {
            Assert.Equal(slowdown, router.BatchFactors.First(b => tokens <= b.MaxTokens).Contended, 3);
            Assert.Equal(slowdown, router.Decide([.. Enumerable.Range(0, 6).Select(e => Miss(e, tokens))]).CpuFactor, 3);
        }
        Assert.All(router.BatchFactors, b => Assert.Equal(320, b.Layers));
        Assert.Equal((1.0, 1.25), router.CpuFactors); // decode untouched
        // The size of a layer is its largest per-expert batch: one expert with 17 tokens makes the layer a "≤ 64" one.
        ExpertLoad[] mixed = [Miss(0, 17), Miss(1, 2), Miss(2, 3), Miss(3, 1)];
        Assert.Equal(1.8, router.Decide(mixed).CpuFactor, 3);
        Assert.Contains("batches of ≤ 16 tokens per expert", router.Report());
        Assert.Contains("batches of > 64 tokens per expert", router.Report());
    }

    [Fact]
    public void Decide_ABatchSizeNotLearnedYet_BorrowsTheNearestLearnedSizeThenLearnsFromThere()
    {
        var router = SplitRouter(Host(cpu1: 2.9), contention: 1.25);
        // Plans with one expert copied and five on the CPU: the CPU lane beside copies, whatever the sizes' speeds.
        LayerPlan Plan(int tokens) => router.Evaluate([.. Enumerable.Range(0, 6).Select(e => Miss(e, tokens))], e => e.Expert == 0);
        void Teach(int tokens, double slowdown, int layers)
        {
            for (int i = 0; i < layers; i++)
            {
                var plan = Plan(tokens);
                router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs / plan.CpuFactor * slowdown);
            }
        }
        // Nothing learned: every size plans with the configured start.
        Assert.Equal(1.25, Plan(200).CpuFactor, 9);
        Assert.All(router.BatchFactors, b => Assert.Equal(0, b.Layers));
        Assert.Contains("not learned yet", router.Report());
        // Only "> 64" learns (2.0): "≤ 64" and "≤ 16" borrow it.
        Teach(200, 2.0, 100);
        Assert.Equal(2.0, Plan(40).CpuFactor, 3);
        Assert.Equal(2.0, Plan(8).CpuFactor, 3);
        Assert.Equal(0, Size(router, 16).Layers);
        // "≤ 16" learns (1.2) from where it borrowed; "≤ 64", equally near both, borrows the smaller size's.
        Teach(8, 1.2, 1);
        Assert.InRange(Size(router, 16).Contended, 1.7, 1.9); // one step from 2.0 toward 1.2 (rate 0.25, limit ×1.5)
        Teach(8, 1.2, 100);
        Assert.Equal(1.2, Size(router, 16).Contended, 3);
        Assert.Equal(1.2, Plan(40).CpuFactor, 3);
        Assert.Equal(2.0, Plan(200).CpuFactor, 3);
        // Saved and put back with what each size has learned, including which sizes have.
        var saved = router.SaveLearned();
        Assert.Equal([0, 101, 0, 100], saved.Samples);
        var fresh = SplitRouter(Host(cpu1: 2.9), contention: 1.25);
        fresh.RestoreLearned(saved);
        Assert.Equal(1.2, fresh.Evaluate([.. Enumerable.Range(0, 6).Select(e => Miss(e, 40))], e => e.Expert == 0).CpuFactor, 3);
        Assert.Throws<ArgumentException>(() => fresh.RestoreLearned(saved with { Samples = [1] }));
        // A layer that teaches both the CPU factor and the copies' factor counts once.
        var both = Plan(40);
        router.Account(both, [], observedCpuLaneMs: both.CpuLaneMs / both.CpuFactor * 1.5, observedDeviceLaneMs: both.GpuLaneMs * 1.2);
        Assert.Equal(1, Size(router, 64).Layers);
        Assert.NotEqual(1.0, Size(router, 64).Transfer);
    }

    private static ExpertRouter.BatchFactor Size(ExpertRouter router, int maxTokens) => router.BatchFactors.Single(b => b.MaxTokens == maxTokens);
}

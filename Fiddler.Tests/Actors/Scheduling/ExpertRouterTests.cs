using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

public sealed partial class ExpertRouterTests
{
    private static readonly HardwareKey Key = new("cpu", 16, "gpu", "shape", "bfloat16");

    /// <summary>A synthetic host: CPU expert cpu1 ms at 1 token (+ cpuPerToken each), constant transfer, GPU compute.</summary>
    private static HardwareProfile Host(double cpu1 = 3.9, double transfer = 6.45, double gpu = 0.15,
        double cpuPerToken = 0.1, double roundTrip = 0.0) => new(Key,
        LatencyModel.Linear(cpu1 - cpuPerToken, cpuPerToken), null, LatencyModel.Constant(gpu), transfer,
        LatencyModel.Constant(roundTrip));

    private static ExpertRouter Router(HardwareProfile host, RoutingMode mode = RoutingMode.Auto, int slots = 2, int exactLimit = 16) =>
        new(host, new RouterOptions(mode, slots, exactLimit, SplitExperts: false, CpuContention: 1));

    private static ExpertLoad Hit(int expert, int tokens = 1) => new(expert, tokens, Resident: true);
    private static ExpertLoad Miss(int expert, int tokens = 1) => new(expert, tokens, Resident: false);

    [Fact]
    public void Decide_AllResident_AllGpuBackToBack()
    {
        var plan = Router(Host()).Decide([Hit(4), Hit(1)]);
        Assert.All(plan.Decisions, d => Assert.Equal(ExpertPlacement.Gpu, d.Placement));
        Assert.Equal([4, 1], plan.Decisions.Select(d => d.Expert)); // input order
        Assert.Equal(0.0, plan.CpuLaneMs);
        Assert.Equal(0.30, plan.MakespanMs, 9);
        Assert.Equal(0.0, plan.For(1).StartMs);  // lower id first on the GPU
        Assert.Equal(0.15, plan.For(4).StartMs, 9);
        Assert.True(plan.Exact);
    }

    [Fact]
    public void Decide_DecodeOneMiss_CpuAsTheSeed()
    {
        // The seed's H100 numbers: PyTorch CPU 6.5 ms vs transfer 6.45 + GPU 0.15 = 6.6 ms.
        var plan = Router(Host(cpu1: 6.5, roundTrip: 0.02)).Decide([Hit(0), Miss(5)]);
        Assert.Equal(ExpertPlacement.Gpu, plan.For(0).Placement);
        Assert.Equal(ExpertPlacement.Cpu, plan.For(5).Placement);
        Assert.Equal(6.52, plan.MakespanMs, 9);
        Assert.Equal(6.52, plan.For(5).PredictedMs, 9);
    }

    [Fact]
    public void Decide_DecodeTwoMisses_StreamsOneWhileCpuComputesTheOther()
    {
        // Two CPU misses: 2 × 3.9 = 7.8 ms; split: max(3.9, 6.45 + 0.15) = 6.6 ms.
        var router = Router(Host(cpu1: 3.9));
        var plan = router.Decide([Miss(6), Miss(2)]);
        Assert.Equal(1, plan.Count(ExpertPlacement.Cpu));
        Assert.Equal(1, plan.Count(ExpertPlacement.Transfer));
        Assert.Equal(6.6, plan.MakespanMs, 9);
        Assert.Equal(7.8, router.Evaluate([Miss(6), Miss(2)], _ => false).MakespanMs, 9);
        // Equal experts tie; the lower id streams, whatever the input order.
        Assert.Equal(ExpertPlacement.Transfer, plan.For(2).Placement);
        Assert.Equal(ExpertPlacement.Transfer, router.Decide([Miss(2), Miss(6)]).For(2).Placement);
        var t = plan.For(2);
        Assert.Equal(0.0, t.StartMs);
        Assert.Equal(6.45, t.ComputeStartMs, 9);
        Assert.Equal(6.6, t.FinishMs, 9);
        Assert.Equal(6.6, t.PredictedMs, 9);
    }

    [Fact]
    public void Decide_DecodeTwoMissesSeedCpu_SplitStillWins()
    {
        // With the seed's 6.5 ms CPU: 13 ms all-CPU vs 6.6 ms split (NOTES.md decode ceiling 5.6 → 7.4 tok/s).
        var plan = Router(Host(cpu1: 6.5)).Decide([Hit(1), Miss(3), Miss(4)]);
        Assert.Equal(1, plan.Count(ExpertPlacement.Transfer));
        Assert.Equal(6.6, plan.MakespanMs, 9); // the resident's 0.15 ms runs while the copy is in flight
        Assert.Equal(6.6, plan.GpuLaneMs, 9);
        Assert.Equal(6.5, plan.CpuLaneMs, 9);
    }

    [Fact]
    public void Decide_DecodeTwoMissesSlowTransfer_BothCpu()
    {
        var plan = Router(Host(cpu1: 3.9, transfer: 20)).Decide([Miss(0), Miss(1)]);
        Assert.Equal(2, plan.Count(ExpertPlacement.Cpu));
        Assert.Equal(7.8, plan.MakespanMs, 9);
        Assert.Equal(0.0, plan.GpuLaneMs);
        Assert.Equal((0.0, 3.9), (plan.For(0).StartMs, plan.For(1).StartMs)); // CPU runs them back to back
    }

    [Fact]
    public void Decide_PrefillLargeBatches_MostlyTransfers()
    {
        // 8 experts × 256 tokens, H100 host: CPU 27 ms each (oneDNN), transfer 6.45 ms, GPU 0.6 ms.
        // All transfers: 8 × 6.45 + 0.6 = 52.2 ms; one on the CPU: max(27.05, 7 × 6.45 + 0.6 = 45.75) ms; two: 54.1 ms.
        var router = new ExpertRouter(HardwareProfileTests.H100(), new RouterOptions(SplitExperts: false, CpuContention: 1));
        var loads = Enumerable.Range(0, 8).Select(e => Miss(e, 256)).ToArray();
        var plan = router.Decide(loads);
        // The default router also divides one expert and finishes sooner, even with the CPU slowed by contention.
        var withSplit = new ExpertRouter(HardwareProfileTests.H100()).Decide(loads);
        Assert.Equal(1, withSplit.Count(ExpertPlacement.Split));
        Assert.True(withSplit.MakespanMs < plan.MakespanMs, $"{withSplit.MakespanMs} vs {plan.MakespanMs}");
        Assert.Equal(7, plan.Count(ExpertPlacement.Transfer));
        Assert.Equal(1, plan.Count(ExpertPlacement.Cpu));
        Assert.Equal(45.75, plan.MakespanMs, 9);
        Assert.True(plan.Decisions.Single(d => d.Placement == ExpertPlacement.Cpu).CpuViaTorch);

        var one = router.Decide([Miss(3, 256)]);
        Assert.Equal(ExpertPlacement.Transfer, one.For(3).Placement);
        Assert.Equal(7.05, one.MakespanMs, 9);
    }

    [Fact]
    public void Decide_CpuOnlyMode_EveryMissOnCpu()
    {
        var router = Router(Host(cpu1: 50, transfer: 1), RoutingMode.CpuOnly, slots: 0);
        var plan = router.Decide([Hit(0), Miss(1, 64), Miss(2)]);
        Assert.Equal(ExpertPlacement.Gpu, plan.For(0).Placement);
        Assert.Equal(2, plan.Count(ExpertPlacement.Cpu));
        Assert.False(plan.Exact);
    }

    [Fact]
    public void Decide_TransferOnlyMode_EveryMissStreamed()
    {
        var plan = Router(Host(cpu1: 0.1, transfer: 100), RoutingMode.TransferOnly).Decide([Miss(1), Miss(2), Hit(3)]);
        Assert.Equal(2, plan.Count(ExpertPlacement.Transfer));
        Assert.Equal(0.0, plan.CpuLaneMs);
    }

    [Theory]
    [InlineData(1, 28.0)] // copy 2, compute 5, and only then the next copy: 4 × 7
    [InlineData(2, 22.0)] // copies hide behind computes: 2 + 4 × 5
    [InlineData(8, 22.0)]
    public void Decide_StagingSlots_CapTransfersInFlight(int slots, double makespan)
    {
        var host = Host(transfer: 2, gpu: 5);
        var plan = Router(host, RoutingMode.TransferOnly, slots).Decide(Enumerable.Range(0, 4).Select(e => Miss(e)).ToArray());
        Assert.Equal(makespan, plan.MakespanMs, 9);
        Assert.True(RouterInvariants.MaxInFlight(plan) <= slots);
        RouterInvariants.Check(plan, host, slots);
    }

    [Fact]
    public void Decide_SlotsCapChangesTheSplit()
    {
        // GPU compute is slow (5 ms), so with one slot each stream holds it for copy + compute = 7 ms.
        // 2 slots: 3 streamed finish at 2 + 3 × 5 = 17 ms, 1 on the CPU 9 ms → 17 (2 streamed: CPU 18).
        // 1 slot: 3 streamed take 3 × 7 = 21 ms, so stream 2 (14 ms) and run 2 on the CPU (18 ms) → 18.
        var host = Host(cpu1: 9, transfer: 2, gpu: 5, cpuPerToken: 0);
        var loads = Enumerable.Range(0, 4).Select(e => Miss(e)).ToArray();
        var two = Router(host, slots: 2).Decide(loads);
        Assert.Equal((17.0, 3), (two.MakespanMs, two.Count(ExpertPlacement.Transfer)));
        var one = Router(host, slots: 1).Decide(loads);
        Assert.Equal((18.0, 2), (one.MakespanMs, one.Count(ExpertPlacement.Transfer)));
        Assert.Equal(1, RouterInvariants.MaxInFlight(one));
    }

    [Fact]
    public void Decide_InputOrder_SameDecisionsPerExpert()
    {
        var router = Router(Host(cpu1: 3.9));
        ExpertLoad[] loads = [Miss(0), Miss(1), Miss(2), Miss(3), Hit(4), Hit(5)];
        var reference = router.Decide(loads);
        var rng = new Random(7);
        for (int i = 0; i < 20; i++)
        {
            var plan = router.Decide(loads.OrderBy(_ => rng.Next()).ToArray());
            foreach (var d in reference.Decisions) Assert.Equal(d, plan.For(d.Expert));
        }
    }

    [Fact]
    public void Decide_AboveExactLimit_UsesGreedy()
    {
        var plan = Router(Host(), exactLimit: 2).Decide([Miss(0), Miss(1), Miss(2)]);
        Assert.False(plan.Exact);
        Assert.Equal(3, plan.Decisions.Count);
    }

    [Fact]
    public void Decide_BadInput_Throws()
    {
        var router = Router(Host());
        Assert.Contains("appears twice", Assert.Throws<ArgumentException>(() => router.Decide([Miss(1), Hit(1)])).Message);
        Assert.Contains("0 tokens", Assert.Throws<ArgumentException>(() => router.Decide([Miss(1, 0)])).Message);
        Assert.Throws<ArgumentException>(() => Router(Host(), slots: 0));
        Assert.Throws<ArgumentException>(() => Router(Host(), exactLimit: 30));
    }

    [Fact]
    public void Account_ObservedTimes_StatsPerPlacementAndLayer()
    {
        var router = Router(Host(cpu1: 3.9));
        var plan = router.Decide([Miss(0), Miss(1), Hit(2)]);
        int cpu = plan.Decisions.Single(d => d.Placement == ExpertPlacement.Cpu).Expert;
        int streamed = plan.Decisions.Single(d => d.Placement == ExpertPlacement.Transfer).Expert;
        router.Account(plan, [new(cpu, 4.9), new(streamed, 6.6), new(2, 0.15)], observedLayerMs: 7.0, observedCpuLaneMs: 4.9);
        router.Account(plan, [new(cpu, 2.9)]);

        var c = router.Stats(ExpertPlacement.Cpu);
        Assert.Equal(2, c.Count);
        Assert.Equal(3.9, c.MeanPredictedMs, 9);
        Assert.Equal(3.9, c.MeanObservedMs, 9);
        Assert.Equal(1.0, c.MeanAbsErrorMs, 9);
        Assert.Equal(1.0, c.MaxAbsErrorMs, 9);
        Assert.Equal(1.0, c.ObservedOverPredicted, 9);
        Assert.Equal(1, router.Stats(ExpertPlacement.Transfer).Count);
        Assert.Equal(1, router.Stats(ExpertPlacement.Gpu).Count);
        Assert.Equal(7.0 / plan.MakespanMs, router.LayerStats.ObservedOverPredicted, 9);
        Assert.Equal((1L, 3.9, 4.9), (router.CpuLaneStats.Count, router.CpuLaneStats.PredictedMsSum, router.CpuLaneStats.ObservedMsSum));
        Assert.Throws<ArgumentException>(() => router.Account(plan, [new(9, 1.0)]));

        string report = router.Report();
        Assert.Contains("cpu            2          3.900         3.900        1.000                1.000", report);
        Assert.Contains("layer", report);
    }

    [Fact]
    public void Stats_NothingAccounted_NaNMeans()
    {
        var s = Router(Host()).Stats(ExpertPlacement.Transfer);
        Assert.Equal(0, s.Count);
        Assert.True(double.IsNaN(s.MeanObservedMs));
    }

    private static ExpertRouter SplitRouter(HardwareProfile host, double contention = 1, double minGain = 0.1) =>
        new(host, new RouterOptions(RoutingMode.Auto, 2, 16, SplitExperts: true, MinSplitGainMs: minGain, CpuContention: contention));

    [Fact]
    public void Decide_DecodeTwoMissesSplitAllowed_DividesOneExpertToBalanceTheLanes()
    {
        // Whole experts: 6.6 ms (one streamed). Split: CPU 3.9 + (1 − t)·3.9 = GPU t·(6.45 + 0.15) → t = 7.8/10.5, 4.903 ms.
        var router = SplitRouter(Host(cpu1: 3.9));
        var plan = router.Decide([Miss(6), Miss(2)]);
        Assert.Equal(1, plan.Count(ExpertPlacement.Split));
        Assert.Equal(1, plan.Count(ExpertPlacement.Cpu));
        Assert.Equal(0, plan.Count(ExpertPlacement.Transfer));
        double t = 7.8 / 10.5;
        Assert.Equal(6.6 * t, plan.MakespanMs, 6);
        Assert.Equal(plan.CpuLaneMs, plan.GpuLaneMs, 6);
        var split = plan.Decisions.Single(d => d.Placement == ExpertPlacement.Split);
        Assert.Equal(1 - t, split.CpuShare, 6);
        RouterInvariants.Check(plan, Host(cpu1: 3.9), 2);
    }

    [Fact]
    public void Decide_OneMissOnSlowMemory_StreamsItAndTheCpuTakesTheFastOne()
    {
        // Expert 6 sits in memory the CPU reads 2× slower (7.8 ms, above a stream's 6.6). Whole experts: the lower id would
        // stream on a tie (above); with the scales the slow one streams and the CPU gets the fast one.
        var router = Router(Host(cpu1: 3.9));
        var plan = router.Decide([new ExpertLoad(6, 1, false, CpuScale: 2), Miss(2)]);
        Assert.Equal(ExpertPlacement.Transfer, plan.For(6).Placement);
        Assert.Equal(ExpertPlacement.Cpu, plan.For(2).Placement);
        Assert.Equal(3.9, plan.CpuLaneMs, 9);

        // Split allowed, 1.6× slower: the slow expert is the one divided, and the layer cannot end sooner than with both fast.
        var split = SplitRouter(Host(cpu1: 3.9)).Decide([new ExpertLoad(6, 1, false, CpuScale: 1.6), Miss(2)]);
        Assert.Equal(ExpertPlacement.Cpu, split.For(2).Placement);
        Assert.Equal(ExpertPlacement.Split, split.For(6).Placement);
        var unscaled = SplitRouter(Host(cpu1: 3.9)).Decide([Miss(6), Miss(2)]);
        Assert.True(split.MakespanMs > unscaled.MakespanMs, "a slower expert cannot make the layer faster");
        RouterInvariants.Check(split, Host(cpu1: 3.9), 2, cpuScales: new Dictionary<int, double> { [6] = 1.6 });
        // 3.9 + (1 − t)·6.24 = 6.6·t: the slow expert's rows split where the lanes meet.
        Assert.Equal(6.6 * (3.9 + 6.24) / (6.24 + 6.6), split.MakespanMs, 6);
    }

    [Fact]
    public void Decide_ScaleAppliesToMemoryBoundBatchesOnly()
    {
        // At 64 tokens the CPU expert is bound by compute: the slow memory does not change the plan.
        var router = Router(Host(cpu1: 3.9));
        var plain = router.Decide([Miss(6, tokens: 64), Miss(2, tokens: 64)]);
        var scaled = router.Decide([new ExpertLoad(6, 64, false, CpuScale: 1.6), Miss(2, tokens: 64)]);
        Assert.Equal(plain.Decisions.Select(d => d.Placement), scaled.Decisions.Select(d => d.Placement));
        Assert.Equal(plain.MakespanMs, scaled.MakespanMs, 9);
        Assert.Throws<ArgumentException>(() => router.Decide([new ExpertLoad(6, 1, false, CpuScale: 0)]));
    }

    [Fact]
    public void Decide_OneMissCpuFasterThanTransfer_SplitsItAcrossBothLanes()
    {
        // CPU 2.9 ms vs transfer 6.6: t·6.6 = (1 − t)·2.9 → t = 2.9/9.5; the layer takes 2.015 ms instead of 2.9.
        var plan = SplitRouter(Host(cpu1: 2.9)).Decide([Hit(0), Miss(5)]);
        Assert.Equal(ExpertPlacement.Split, plan.For(5).Placement);
        Assert.Equal(6.6 * 2.9 / 9.5, plan.MakespanMs, 6);
    }

    [Fact]
    public void Decide_ContentionSlowsTheCpuLane_SplitShiftsTowardTheGpu()
    {
        var calm = SplitRouter(Host(cpu1: 2.9)).Decide([Miss(5)]);
        var contended = SplitRouter(Host(cpu1: 2.9), contention: 1.3).Decide([Miss(5)]);
        Assert.True(contended.For(5).CpuShare < calm.For(5).CpuShare);
        // 2.9·1.3·(1 − t) = 6.6·t
        double t = 2.9 * 1.3 / (2.9 * 1.3 + 6.6);
        Assert.Equal(6.6 * t, contended.MakespanMs, 6);
    }

    [Fact]
    public void Decide_AllOnCpuNoTransfer_NoContentionCharged()
    {
        var plan = Router(Host(cpu1: 2.9, transfer: 1000)).Decide([Miss(1), Miss(2)]);
        var contended = new ExpertRouter(Host(cpu1: 2.9, transfer: 1000), new RouterOptions(CpuContention: 1.5)).Decide([Miss(1), Miss(2)]);
        Assert.Equal(0, contended.Count(ExpertPlacement.Split)); // a 1000 ms copy never pays
        Assert.Equal(plan.MakespanMs, contended.MakespanMs, 9);
    }

    [Fact]
    public void Decide_SplitGainBelowMinimum_KeepsWholeExperts()
    {
        // CPU 6.7 vs transfer 6.6: the best split gains ~3.3 ms here, so require more than that.
        var plan = SplitRouter(Host(cpu1: 6.7), minGain: 4).Decide([Miss(3)]);
        Assert.Equal(0, plan.Count(ExpertPlacement.Split));
        Assert.Equal(6.6, plan.MakespanMs, 9);
    }

    [Fact]
    public void Decide_PrefillManyTokens_GpuBoundLayerMovesPartOfATransferToTheCpu()
    {
        // 3 misses of 200 tokens: CPU 20.0 ms each, transfer 6.45 + GPU 0.15: all three streamed = 19.8 ms; a split
        // lets the CPU take part of the last copy.
        var host = Host(cpu1: 0.1 * 200, cpuPerToken: 0.1);
        var whole = Router(host).Decide([Miss(0, 200), Miss(1, 200), Miss(2, 200)]);
        var plan = SplitRouter(host).Decide([Miss(0, 200), Miss(1, 200), Miss(2, 200)]);
        Assert.Equal(1, plan.Count(ExpertPlacement.Split));
        Assert.True(plan.MakespanMs < whole.MakespanMs - 0.1, $"{plan.MakespanMs} vs {whole.MakespanMs}");
        RouterInvariants.Check(plan, host, 2);
    }

    [Fact]
    public void Account_CpuLanesSlowerThanCalibrated_LearnsFactorPerRegimeAndShiftsTheSplit()
    {
        var host = Host(cpu1: 2.9);
        var router = SplitRouter(host, contention: 1.0);
        var before = router.Decide([Miss(5)]);
        Assert.Equal(ExpertPlacement.Split, before.For(5).Placement);
        // Calm layers (no transfer) run 1.2× slower than calibrated; layers beside transfers 1.5×.
        var calm = router.Evaluate([Miss(1)], _ => false);
        for (int i = 0; i < 400; i++)
        {
            router.Account(calm, [], observedCpuLaneMs: calm.CpuLaneMs / calm.CpuFactor * 1.2);
            var plan = router.Decide([Miss(5)]);
            router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs / plan.CpuFactor * 1.5);
        }
        var (calmFactor, contended) = router.CpuFactors;
        Assert.Equal(1.2, calmFactor, 3);
        Assert.Equal(1.5, contended, 3);
        var after = router.Decide([Miss(5)]);
        Assert.True(after.For(5).CpuShare < before.For(5).CpuShare, "a slower CPU should take a smaller share");
        double t = 2.9 * 1.5 / (2.9 * 1.5 + 6.6);
        Assert.Equal(6.6 * t, after.MakespanMs, 3);
        Assert.Equal(2.9 * 1.2, router.Evaluate([Miss(1)], _ => false).MakespanMs, 3);
    }

    [Fact]
    public void Account_DeviceLanesSlowerThanPlanned_LearnsTransferFactorAndGivesTheCpuMore()
    {
        var host = Host(cpu1: 2.9);
        var router = SplitRouter(host, contention: 1.0);
        var before = router.Decide([Miss(5)]);
        Assert.Equal(ExpertPlacement.Split, before.For(5).Placement);
        // Copies take 1.4× the calibrated time in the engine (the CPU lane reads the same DRAM).
        for (int i = 0; i < 400; i++)
        {
            var plan = router.Decide([Miss(5)]);
            double copy = (1 - plan.For(5).CpuShare) * 6.45 * 1.4;
            router.Account(plan, [], observedDeviceLaneMs: copy + (1 - plan.For(5).CpuShare) * 0.15);
        }
        Assert.InRange(router.TransferFactor, 1.35, 1.45);
        var after = router.Decide([Miss(5)]);
        Assert.True(after.For(5).CpuShare > before.For(5).CpuShare + 0.05, $"{after.For(5).CpuShare} vs {before.For(5).CpuShare}");
        Assert.Equal(router.TransferFactor, after.TransferFactor, 9);
        // Prefill-sized layers, and copies with no CPU lane beside them, keep the calibrated copy time.
        Assert.Equal(1, router.Decide([Miss(5, tokens: 64)]).TransferFactor);
        var alone = router.Evaluate([Miss(5)], _ => true);
        Assert.Equal(1, alone.TransferFactor);
        Assert.Equal(6.45 + 0.15, alone.GpuLaneMs, 6);
    }

    [Fact]
    public void Account_AdaptationOff_FactorsStayFixed()
    {
        var router = new ExpertRouter(Host(cpu1: 2.9), new RouterOptions(CpuContention: 1.3, AdaptCpuModel: false));
        var plan = router.Evaluate([Miss(1)], _ => false);
        router.Account(plan, [], observedCpuLaneMs: plan.CpuLaneMs * 3);
        var streamed = router.Evaluate([Miss(1), Miss(2)], e => e.Expert == 2); // a CPU lane beside a copy
        Assert.True(streamed.HasTransfers && streamed.HasCpuWork);
        router.Account(streamed, [], observedCpuLaneMs: streamed.CpuLaneMs * 3, observedDeviceLaneMs: streamed.GpuLaneMs * 3);
        Assert.Equal((1.0, 1.3), router.CpuFactors);
        Assert.Equal(1.0, router.TransferFactor);
    }
}

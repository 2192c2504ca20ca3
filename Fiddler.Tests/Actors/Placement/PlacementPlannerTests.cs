using Xunit;
using Fiddler.Actors.Placement;

namespace Fiddler.Tests.Actors.Placement;

public sealed class PlacementPlannerTests
{
    private static readonly ModelShape Mixtral = ModelShapeTests.Mixtral;
    private static readonly long Gib = 1L << 30;

    [Fact]
    public void Plan_Mixtral24GiBWithKvAndStagingReserve_Fits60Experts()
    {
        // NOTES.md says ~60 of 256 at 24 GiB. Here: 24 GiB − 2.99 GiB non-expert − 0.5 GiB KV (4096 positions)
        // − a reserve of two 352 MB staging slots = 19.85 GiB = 60.5 experts of 352 MB → 60 whole experts.
        long reserve = 2 * Mixtral.ExpertBytes;
        var plan = PlacementPlanner.Plan(Mixtral, 24 * Gib, ExpertPopularity.Uniform(32, 8), Mixtral.KvCacheBytes(4096), reserve);
        Assert.Equal(60, plan.ExpertsOnGpu);
        Assert.Equal(256, plan.TotalExperts);
        Assert.True(plan.UsedBytes + reserve <= 24 * Gib);
        Assert.True(plan.UsedBytes + reserve + Mixtral.ExpertBytes > 24 * Gib);
        // Uniform counts tie everywhere: lower layers first, so layers 0-6 are full and layer 7 gets experts 0-3.
        Assert.Equal([8, 8, 8, 8, 8, 8, 8, 4], plan.ExpertsOnGpuPerLayer.Take(8));
        Assert.All(plan.ExpertsOnGpuPerLayer.Skip(8), n => Assert.Equal(0, n));
        Assert.True(plan.IsOnGpu(7, 3));
        Assert.False(plan.IsOnGpu(7, 4));
    }

    [Fact]
    public void Plan_Mixtral24GiBNothingElse_Fits64Experts()
    {
        // The raw arithmetic without KV cache or reserve: (24 − 2.99) GiB / 0.328 GiB = 64.03 → 64.
        var plan = PlacementPlanner.Plan(Mixtral, 24 * Gib, ExpertPopularity.Uniform(32, 8), 0, 0);
        Assert.Equal(64, plan.ExpertsOnGpu);
        Assert.Equal(23.99, plan.UsedGiB, 2);
    }

    [Fact]
    public void EnginePlacement_BeamWidth_ReservesEachBeamsKvCache()
    {
        var one = new Fiddler.Actors.Engine.EngineOptions { Device = TorchSharp.torch.CPU, ContextTokens = 8192 };
        var four = one with { Sequences = 4 };
        var plan1 = Fiddler.Actors.Engine.OffloadEngine.PlanPlacement(one, Mixtral, 32768, 24 * Gib);
        var plan4 = Fiddler.Actors.Engine.OffloadEngine.PlanPlacement(four, Mixtral, 32768, 24 * Gib);
        Assert.Equal(Mixtral.KvCacheBytes(8192), plan1.KvCacheBytes);                 // 1 GiB
        Assert.Equal(4 * Mixtral.KvCacheBytes(8192), plan4.KvCacheBytes);             // 4 GiB: the beams' cache is [4, ...]
        Assert.True(plan4.ExpertsOnGpu <= plan1.ExpertsOnGpu - 9, $"{plan4.ExpertsOnGpu} vs {plan1.ExpertsOnGpu}"); // 3 GiB KV + 3 prompts' activations
        Assert.Throws<ArgumentException>(() => Fiddler.Actors.Engine.OffloadEngine.PlanPlacement(one with { Sequences = 0 }, Mixtral, 32768, 24 * Gib));
        Assert.Throws<ArgumentException>(() => Fiddler.Actors.Engine.OffloadEngine.PlanPlacement(one with { Sequences = 33 }, Mixtral, 32768, 24 * Gib));
    }

    [Fact]
    public void Plan_BudgetBelowNonExpertPart_ThrowsNeededVsGiven()
    {
        var e = Assert.Throws<PlacementException>(() =>
            PlacementPlanner.Plan(Mixtral, 2 * Gib, ExpertPopularity.Uniform(32, 8), Gib / 2, Gib));
        Assert.Equal("budget 2 GiB cannot hold the non-expert weights (3.0 GiB) + KV cache (0.5 GiB) + reserve (1.0 GiB) = 4.5 GiB",
            e.Message);
    }

    [Fact]
    public void Plan_BudgetHoldsFixedPartExactly_NoExperts()
    {
        long fixedBytes = Mixtral.NonExpertBytes + Gib;
        var plan = PlacementPlanner.Plan(Mixtral, fixedBytes + Mixtral.ExpertBytes - 1, ExpertPopularity.Uniform(32, 8), Gib, 0);
        Assert.Equal(0, plan.ExpertsOnGpu);
    }

    [Fact]
    public void Plan_BudgetAboveWholeModel_AllExpertsOnGpu()
    {
        var plan = PlacementPlanner.Plan(Mixtral, 200 * Gib, ExpertPopularity.Uniform(32, 8), 0, 0);
        Assert.Equal(256, plan.ExpertsOnGpu);
        Assert.Equal(1.0, plan.ExpectedHitRate);
    }

    [Fact]
    public void Plan_EveryExpertFitsWithoutStaging_ReservesNoStaging()
    {
        // A budget that holds the whole model and the activation reserve, but not the staging slots as well: nothing is
        // left in host memory, so nothing is staged, and the plan neither drops an expert nor counts the slots.
        long staging = 2 * Mixtral.ExpertBytes, reserve = Gib / 2;
        long whole = Mixtral.NonExpertBytes + Mixtral.AllExpertsBytes + reserve;
        var plan = PlacementPlanner.Plan(Mixtral, whole + staging / 2, ExpertPopularity.Uniform(32, 8), 0, reserve, staging);
        Assert.Equal(256, plan.ExpertsOnGpu);
        Assert.Equal(reserve, plan.ReserveBytes);
    }

    [Fact]
    public void Plan_SomeExpertInHostMemory_ReservesStagingBeforeExperts()
    {
        long staging = 2 * Mixtral.ExpertBytes, reserve = Gib / 2;
        long whole = Mixtral.NonExpertBytes + Mixtral.AllExpertsBytes + reserve;
        var plan = PlacementPlanner.Plan(Mixtral, whole - 1, ExpertPopularity.Uniform(32, 8), 0, reserve, staging);
        Assert.Equal(reserve + staging, plan.ReserveBytes);
        Assert.Equal(256 - 3, plan.ExpertsOnGpu); // one byte short of the whole model: the slots take two more experts' room
        Assert.True(plan.UsedBytes + plan.ReserveBytes <= whole - 1);

        // The fixed part with the slots must fit, and the error names the reserve with them.
        var e = Assert.Throws<PlacementException>(() =>
            PlacementPlanner.Plan(Mixtral, Mixtral.NonExpertBytes + reserve + staging - 1, ExpertPopularity.Uniform(32, 8), 0, reserve, staging));
        Assert.Contains($"reserve ({MemoryBudget.Format1(reserve + staging)})", e.Message);
    }

    [Fact]
    public void Plan_Popularity_MostChosenFirstTiesByLayerThenExpert()
    {
        var shape = new ModelShape(3, 4, 8, 8, 16, 2, 1, 4, 4, false);
        var pop = new ExpertPopularity("m", 3, 4);
        void Add(int l, int e, int n) { for (int i = 0; i < n; i++) pop.Record(l, e); }
        Add(2, 3, 9); Add(1, 1, 5); Add(0, 2, 5); Add(2, 0, 5); Add(1, 2, 1);
        // Room for 4 experts: (2,3) with 9, then the three with 5 in order (0,2), (1,1), (2,0).
        var plan = PlacementPlanner.Plan(shape, shape.NonExpertBytes + 4 * shape.ExpertBytes, pop, 0, 0);
        bool[,] expected = new bool[3, 4];
        expected[2, 3] = expected[0, 2] = expected[1, 1] = expected[2, 0] = true;
        Assert.Equal(expected, plan.OnGpu);
        Assert.Equal([1, 1, 2], plan.ExpertsOnGpuPerLayer);
        Assert.Equal([false, false, true, false], plan.OnGpuByLayer()[0]);
        Assert.Equal([true, false, false, true], plan.OnGpuByLayer()[2]);
        Assert.Equal(24.0 / 25.0, plan.ExpectedHitRate, 9);

        // Room for 3: the tie among the 5s is broken towards the lower layer, so (2,0) is left out.
        var three = PlacementPlanner.Plan(shape, shape.NonExpertBytes + 3 * shape.ExpertBytes, pop, 0, 0);
        Assert.False(three.IsOnGpu(2, 0));
        Assert.True(three.IsOnGpu(0, 2) && three.IsOnGpu(1, 1) && three.IsOnGpu(2, 3));
    }

    [Fact]
    public void Plan_PopularityForAnotherModel_Throws() =>
        Assert.Throws<InvalidDataException>(() => PlacementPlanner.Plan(Mixtral, 24 * Gib, ExpertPopularity.Uniform(2, 4), 0, 0));

    [Fact]
    public void Summary_Mixtral_ListsLayersTotalsAndGiB()
    {
        var plan = PlacementPlanner.Plan(Mixtral, 24 * Gib, ExpertPopularity.Uniform(32, 8), Gib / 2, 2 * Mixtral.ExpertBytes);
        string s = plan.Summary();
        Assert.Contains("    0    8/8   XXXXXXXX", s);
        Assert.Contains("    7    4/8   XXXX....", s);
        Assert.Contains("   31    0/8   ........", s);
        Assert.Contains("total  60/256 experts on GPU (19.7 GiB)", s);
        Assert.Contains("23.2 GiB used of 24 GiB: non-expert 3.0 GiB + KV cache 0.5 GiB + experts 19.7 GiB; reserve 0.7 GiB", s);
        Assert.Equal(32 + 3, s.Split('\n').Length);
    }

    /// <summary>Every expert's host read rate: 120 GB/s, except the ones named (layer, expert, rate).</summary>
    private static double?[,] Rates(params (int Layer, int Expert, double? GBps)[] except)
    {
        var rates = new double?[32, 8];
        for (int l = 0; l < 32; l++)
            for (int e = 0; e < 8; e++) rates[l, e] = 120;
        foreach (var (l, e, r) in except) rates[l, e] = r;
        return rates;
    }

    [Fact]
    public void ByReadSpeed_UniformProfile_PutsTheSlowestReadingExpertsOnTheGpu()
    {
        var pop = ExpertPopularity.Uniform(32, 8);
        var plan = PlacementPlanner.Plan(Mixtral, 24 * Gib, pop, Mixtral.KvCacheBytes(4096), 2 * Mixtral.ExpertBytes);
        // Layers 20-27 sit in slow memory (85 GB/s): 64 experts, 60 of which the GPU can take.
        var slow = Enumerable.Range(20, 8).SelectMany(l => Enumerable.Range(0, 8).Select(e => (l, e, (double?)85))).ToArray();
        var chosen = PlacementPlanner.ByReadSpeed(plan, pop, Rates(slow));
        Assert.Equal(plan.ExpertsOnGpu, chosen.ExpertsOnGpu);
        Assert.Equal(60, Enumerable.Range(20, 8).Sum(l => chosen.ExpertsOnGpuPerLayer[l]));
        Assert.Equal(plan.UsedBytes, chosen.UsedBytes);
        Assert.Equal(plan.ReserveBytes, chosen.ReserveBytes);
    }

    [Fact]
    public void ByReadSpeed_PopularityWeighsAgainstSpeed()
    {
        // Expert (3, 1) is chosen 10× as often as (9, 2) but reads 2× faster: the CPU would spend 5× longer on it.
        var pop = ExpertPopularity.Uniform(32, 8);
        for (int i = 0; i < 10; i++) pop.Record(3, 1);
        pop.Record(9, 2);
        var plan = PlacementPlanner.Plan(Mixtral, Mixtral.NonExpertBytes + Mixtral.ExpertBytes, pop, 0, 0); // room for one
        Assert.Equal(1, plan.ExpertsOnGpu);
        var chosen = PlacementPlanner.ByReadSpeed(plan, pop, Rates((3, 1, 120), (9, 2, 60)));
        Assert.True(chosen.IsOnGpu(3, 1));
        // Ten times slower memory outweighs ten times the choices ((10+1)/120 < (1+1)/12).
        chosen = PlacementPlanner.ByReadSpeed(plan, pop, Rates((3, 1, 120), (9, 2, 12)));
        Assert.True(chosen.IsOnGpu(9, 2));
        Assert.Equal((double)1 / 11, chosen.ExpectedHitRate, 6); // (9, 2) serves 1 of the 11 recorded choices
    }

    [Fact]
    public void ByReadSpeed_UnmeasuredExpertsCountAtTheMedianRate()
    {
        var pop = ExpertPopularity.Uniform(32, 8);
        var plan = PlacementPlanner.Plan(Mixtral, Mixtral.NonExpertBytes + 2 * Mixtral.ExpertBytes, pop, 0, 0); // room for two
        var chosen = PlacementPlanner.ByReadSpeed(plan, pop, Rates((5, 5, null), (6, 6, double.NaN), (7, 7, 0), (30, 0, 100), (31, 7, 90)));
        Assert.True(chosen.IsOnGpu(30, 0));
        Assert.True(chosen.IsOnGpu(31, 7));
        Assert.Throws<ArgumentException>(() => PlacementPlanner.ByReadSpeed(plan, pop, new double?[31, 8]));
    }

    [Fact]
    public void ByReadSpeed_EvenMemory_KeepsThePopularityPlan()
    {
        // Rates within 10 % of the median are the same memory: whole low layers stay on the GPU (fewer layers with a
        // CPU lane), not experts scattered by measurement noise.
        var pop = ExpertPopularity.Uniform(32, 8);
        var plan = PlacementPlanner.Plan(Mixtral, 24 * Gib, pop, Mixtral.KvCacheBytes(4096), 2 * Mixtral.ExpertBytes);
        var noisy = Enumerable.Range(0, 32).SelectMany(l => Enumerable.Range(0, 8).Select(e => (l, e, (double?)(115 + (l * 7 + e * 3) % 12)))).ToArray();
        var chosen = PlacementPlanner.ByReadSpeed(plan, pop, Rates(noisy));
        Assert.Equal(plan.OnGpuByLayer(), chosen.OnGpuByLayer());
        // One clearly slow expert (below 90 % of the median) takes the last slot of the popularity order.
        var oneSlow = PlacementPlanner.ByReadSpeed(plan, pop, Rates([.. noisy.Where(x => (x.l, x.e) != (20, 5)), (20, 5, 90)]));
        Assert.True(oneSlow.IsOnGpu(20, 5));
        Assert.False(oneSlow.IsOnGpu(7, 3));
        Assert.Equal(plan.ExpertsOnGpu, oneSlow.ExpertsOnGpu);
    }
}

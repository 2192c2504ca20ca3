using Fiddler.Actors.Engine;
using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Fiddler.Tests.Actors.Scheduling;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

/// <summary>A layer whose chosen experts are all resident runs on the device without asking the scheduler.</summary>
public sealed class ResidentLayerShortcutTests
{
    private sealed class Counting(IExpertScheduler inner) : IExpertScheduler
    {
        public int Decisions;
        public List<LayerObservation> Observed { get; } = [];

        public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work)
        {
            Assert.Contains(work, w => !w.Resident); // never asked about an all-resident layer
            Decisions++;
            return inner.Decide(layer, work);
        }

        public void Observe(LayerObservation o)
        {
            Observed.Add(o);
            inner.Observe(o);
        }
    }

    [Fact]
    public void AllResidentLayers_AreNotDecided_AndTheTokensStayHfs()
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-mha-top1");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        var options = new GenerationOptions { MaxNewTokens = 6, Sampling = SamplingOptions.Greedy, StopOnEos = false };
        int[] prompt = [1, 5, 9, 2, 7];

        using var reference = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32));
        var expected = new Fiddler.Kernels.Generation.Generator(reference.Model, null).Run(prompt, options).Tokens;

        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32,
            ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (l, e) => (l + e) % 2 == 0)));
        var scheduler = new Counting(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu));
        using var executor = new OffloadExecutor(scheduler, new TorchCpuBackend(), null);
        loaded.Model.SetExpertExecutor(executor);
        var tokens = new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run(prompt, options).Tokens;

        Assert.Equal(expected, tokens);
        var skipped = scheduler.Observed.Where(o => !o.Decided).ToList();
        Assert.NotEmpty(skipped);                                      // top-1 with half resident: about half the layers
        Assert.All(skipped, o => Assert.All(o.Routes, r => Assert.Equal(ExpertRoute.Gpu, r)));
        Assert.Equal(scheduler.Observed.Count(o => o.Decided), scheduler.Decisions);
    }

    [Fact]
    public void RouterScheduler_UndecidedObservation_CountsHitsButTeachesNothing()
    {
        var router = new ExpertRouter(HardwareProfileTests.H100());
        var scheduler = new RouterScheduler(router);
        ExpertWork[] offloaded = [new(0, 1, false), new(3, 1, true)];
        var routes = scheduler.Decide(5, offloaded);
        // An all-resident layer observed afterwards for the same layer: not accounted against that older plan.
        ExpertWork[] resident = [new(1, 1, true), new(2, 1, true)];
        scheduler.Observe(new LayerObservation(5, resident, [ExpertRoute.Gpu, ExpertRoute.Gpu], 0, 0.9, 0, 0) { Decided = false });
        Assert.Equal(0, router.LayerStats.Count);
        Assert.Equal(0, router.CpuLaneStats.Count);
        Assert.Equal(1.0, scheduler.HitRate);
        // The decided layer's own observation is accounted.
        scheduler.Observe(new LayerObservation(5, offloaded, routes, 4.0, 4.2, 1, 0));
        Assert.Equal(1, router.LayerStats.Count);
        Assert.Equal(0.75, scheduler.HitRate);
    }

    [Fact]
    public void RouterScheduler_Handoffs_AveragedOverTheLayersThatHaveThem()
    {
        var scheduler = new RouterScheduler(new ExpertRouter(HardwareProfileTests.H100()));
        ExpertWork[] work = [new(0, 1, false)];
        Assert.Equal((default(HandoffTimings), 0L), scheduler.MeanHandoff);
        scheduler.Observe(new LayerObservation(1, work, [ExpertRoute.Cpu], 4, 4, 1, 0) { Handoff = new(0.2, 0.5, 0.05, 0.02) });
        scheduler.Observe(new LayerObservation(2, work, [ExpertRoute.Cpu], 4, 4, 1, 0));   // the token's last layer: none
        scheduler.Observe(new LayerObservation(3, work, [ExpertRoute.Cpu], 4, 4, 1, 0) { Handoff = new(0.4, 0.7, 0.15, 0.04) });
        var (mean, layers) = scheduler.MeanHandoff;
        Assert.Equal(2, layers);
        Assert.Equal(0.3, mean.DeviceMs, 9);
        Assert.Equal(0.6, mean.HostMs, 9);
        Assert.Equal(0.1, mean.ToExecutorMs, 9);
        Assert.Equal(0.03, mean.ReadbackMs, 9);
        scheduler.ResetCounters();
        Assert.Equal(0, scheduler.MeanHandoff.Layers);
    }

    [Fact]
    public void RouterScheduler_HandoffByLastLane_SplitsOnTheDevicesWaitForTheCpu()
    {
        var scheduler = new RouterScheduler(new ExpertRouter(HardwareProfileTests.H100()));
        ExpertWork[] work = [new(0, 1, false)];
        LayerObservation Layer(double waitedMs, double hostMs) => new(1, work, [ExpertRoute.Cpu], 4, 4, 1, 0)
            { Device = new(4.5, waitedMs), Handoff = new(0.15, hostMs, 0.02) };
        scheduler.Observe(Layer(0.005, 0.5));  // the device hardly waited: its lane ended last
        scheduler.Observe(Layer(0.015, 0.3));
        scheduler.Observe(Layer(0.3, 0.18));   // the device waited 0.3 ms: the CPU lane ended last
        scheduler.Observe(new LayerObservation(2, work, [ExpertRoute.Cpu], 4, 4, 1, 0) { Handoff = new(0.15, 9, 0.02) }); // no device timing: neither
        var (deviceLast, cpuLast) = scheduler.HandoffByLastLane;
        Assert.Equal(2, deviceLast.Layers);
        Assert.Equal(0.4, deviceLast.HostMs, 9);
        Assert.Equal(1, cpuLast.Layers);
        Assert.Equal(0.18, cpuLast.HostMs, 9);
        scheduler.ResetCounters();
        Assert.Equal(((0.0, 0L), (0.0, 0L)), scheduler.HandoffByLastLane);
    }
}

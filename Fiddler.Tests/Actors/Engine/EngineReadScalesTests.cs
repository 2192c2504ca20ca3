using Xunit;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Scheduling;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Actors.Engine;

/// <summary>The engine's start-up read of every host expert (<see cref="HostReadScales"/>) on a model big enough to time.</summary>
public sealed class EngineReadScalesTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private OffloadEngine Engine(List<string> log, bool scales = true, RoutingMode routing = RoutingMode.Auto, long budget = 24 << 20,
        bool bySpeed = false)
    {
        // fp32 experts of 512 × 1024: each matrix 2 MiB, above the 1 MiB a read is timed in. A 24 MiB budget (23 MiB without experts; one is 6 MiB) keeps all 8 in host memory.
        if (!File.Exists(Path.Combine(_dir, "config.json")))
            TinyCheckpoint.Write(_dir, TinyCheckpoint.Config() with { HiddenSize = 512, IntermediateSize = 1024 });
        return OffloadEngine.Create(new EngineOptions
        {
            ModelDir = _dir, Device = TorchSharp.torch.CPU, GpuBudgetBytes = budget, ContextTokens = 32, CpuThreads = 2,
            ProfilePath = Path.Combine(_dir, "profile.json"), ExpertReadScales = scales, Routing = routing, PlaceByReadSpeed = bySpeed,
        }, log.Add);
    }

    [Fact]
    public void Create_WithHostExperts_ReadsEachOnceAtStartAndPlansByThemOnlyWhereUneven()
    {
        var log = new List<string>();
        using var engine = Engine(log);
        var scales = Assert.IsType<HostReadScales>(engine.ReadScales);
        Assert.Equal(8, scales.Measured); // 2 layers × 4 experts, all in host memory
        Assert.True(scales.ReferenceRate > 0);
        // The router plans by them exactly when the host's memory is uneven; either way the log says which.
        Assert.Equal(scales.Uneven, engine.Scheduler!.ReadScales is not null);
        Assert.Contains(log, l => l.StartsWith("host expert reads: 8 host experts"));
    }

    [Fact]
    public void Create_ReadScalesOffOrNothingToChoose_NotMeasured()
    {
        var log = new List<string>();
        using (var off = Engine(log, scales: false))
            Assert.Null(off.ReadScales);
        using (var cpuOnly = Engine(log, routing: RoutingMode.CpuOnly))
            Assert.Null(cpuOnly.ReadScales);
        Assert.DoesNotContain(log, l => l.StartsWith("host expert reads"));
    }

    [Fact]
    public void Create_PlaceByReadSpeed_MovesThePlansCountOfExpertsAndGivesTheSameOutput()
    {
        // 36 MiB: room for two of the eight 6 MiB experts. Placed by read speed, the two can be any; the model must
        // compute the same function as when placed by popularity, with the same number on the "GPU" (here the CPU device).
        var log = new List<string>();
        using var byPopularity = Engine(log, budget: 36 << 20);
        using var bySpeed = Engine(log, budget: 36 << 20, bySpeed: true);
        Assert.Equal(2, byPopularity.Plan!.ExpertsOnGpu);
        Assert.Equal(2, bySpeed.Plan!.ExpertsOnGpu);
        var layers = bySpeed.Model.Model.Layers;
        Assert.Equal(2, layers.Sum(l => Enumerable.Range(0, 4).Count(l.Moe.IsResident)));
        Assert.All(layers, l => Assert.All(Enumerable.Range(0, 4), e => Assert.Equal(bySpeed.Plan.IsOnGpu(l.Moe.Layer, e), l.Moe.IsResident(e))));
        Assert.Equal(byPopularity.Model.named_parameters().Select(p => p.name).Order(), bySpeed.Model.named_parameters().Select(p => p.name).Order());
        Assert.Contains(log, l => l.StartsWith("placement by read speed: ") && l.Contains("2 experts on the GPU read at median"));

        using var noGrad = TorchSharp.torch.no_grad();
        using var ids = TorchSharp.torch.tensor(new long[] { 1, 5, 9, 13 }).unsqueeze(0);
        using var c1 = byPopularity.Model.NewCache(4);
        using var c2 = bySpeed.Model.NewCache(4);
        using var a = byPopularity.Model.Forward(ids, c1, allPositions: true);
        using var b = bySpeed.Model.Forward(ids, c2, allPositions: true);
        Assert.True(TorchSharp.torch.allclose(a, b, rtol: 1e-5, atol: 1e-5), "placement by read speed changed the model's output");
    }
}

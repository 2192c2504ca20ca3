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

    private OffloadEngine Engine(List<string> log, bool scales = true, RoutingMode routing = RoutingMode.Auto)
    {
        // fp32 experts of 512 × 1024: each matrix 2 MiB, above the 1 MiB a read is timed in. A 24 MiB budget (23 MiB without experts; one is 6 MiB) keeps all 8 in host memory.
        if (!File.Exists(Path.Combine(_dir, "config.json")))
            TinyCheckpoint.Write(_dir, TinyCheckpoint.Config() with { HiddenSize = 512, IntermediateSize = 1024 });
        return OffloadEngine.Create(new EngineOptions
        {
            ModelDir = _dir, Device = TorchSharp.torch.CPU, GpuBudgetBytes = 24 << 20, ContextTokens = 32, CpuThreads = 2,
            ProfilePath = Path.Combine(_dir, "profile.json"), ExpertReadScales = scales, Routing = routing,
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
}

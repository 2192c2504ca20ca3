using Fiddler.Actors.Engine;
using Fiddler.Actors.Runtime;
using Fiddler.Host.Serving;
using Fiddler.Tests.Host;
using Fiddler.Tests.Support;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary><c>fiddler serve</c>'s start-up warm-up through the actor runtime, on a fixture model with every expert in host memory.</summary>
[Collection(ConsoleCollection.Name)]
public sealed class ServeWarmupTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A fixture model under a 1 MiB budget: every expert in host memory, so every layer goes through the router.</summary>
    private OffloadEngine HostExpertsEngine() => OffloadEngine.Create(new EngineOptions
    {
        ModelDir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3"), Device = TorchSharp.torch.CPU,
        GpuBudgetBytes = 1 << 20, ContextTokens = 64, CpuThreads = 2, ProfilePath = Path.Combine(_dir, "profile.json"),
    }, _ => { });

    [Fact]
    public async Task WarmUpAsync_RunsEachPromptThroughTheRouterThenStartsTheLayerStatsOver()
    {
        using var engine = HostExpertsEngine();
        var scheduler = engine.Scheduler!;
        await using var runtime = FiddlerRuntime.Start(engine.Model, null, (scheduler, engine.Cpu!, engine.Stager));
        int[] lengths = WarmupPlan.PromptLengths(engine.Config, 64); // 6 experts, top-3: 16, 64 → 55 (the context's room)
        Assert.Equal([16, 55], lengths);

        var err = new StringWriter();
        var saved = Console.Error;
        Console.SetError(err);
        try { await ServeCommand.WarmUpAsync(runtime, engine.Config, 64, CancellationToken.None); }
        finally { Console.SetError(saved); }

        // Every prompt's layers went through the router (its own prediction counters are not the served totals) ...
        int layers = engine.Config.NumHiddenLayers;
        long expectedLayers = layers * (lengths.Length + WarmupPlan.DecodeSteps);
        Assert.Equal(expectedLayers, scheduler.Router.LayerStats.Count);
        // ... and the served per-layer totals start from zero.
        Assert.All(await runtime.LayerStatsAsync(), s => Assert.Equal(0, s.Steps));
        Assert.Contains("fiddler: warm-up: prompts of 16, 55 tokens and 8 decode steps in", err.ToString());

        // Served requests count again.
        await foreach (var _ in runtime.GenerateAsync([5, 6, 7], new Fiddler.Kernels.Generation.GenerationOptions { MaxNewTokens = 2, StopOnEos = false })) { }
        Assert.All(await runtime.LayerStatsAsync(), s => Assert.Equal(2, s.Steps));
    }

    [Fact]
    public async Task StartupProbe_LeavesTheLayerStatsAlone_RouterStillLearns_RequestsCount()
    {
        using var engine = HostExpertsEngine();
        var scheduler = engine.Scheduler!;
        await using var runtime = FiddlerRuntime.Start(engine.Model, null, (scheduler, engine.Cpu!, engine.Stager));
        await using var service = new InferenceService(runtime, null, null, new InferenceServiceOptions("tiny", 4));

        await service.StartAsync();

        Assert.True(service.Health.Ready);
        int layers = engine.Config.NumHiddenLayers;
        Assert.All(await runtime.LayerStatsAsync(), s => Assert.Equal(0, s.Steps)); // also: the router has accounted the probe
        Assert.Equal(layers, scheduler.Router.LayerStats.Count); // the probe's one prefill token went through the router
        Assert.All(await runtime.LayerStatsAsync(), s => Assert.Equal(0, s.Steps));
        // A generation asked for uncounted, then a counted one: only the second counts.
        await foreach (var _ in runtime.GenerateAsync([5, 6], new Fiddler.Kernels.Generation.GenerationOptions { MaxNewTokens = 3, StopOnEos = false },
                           countInStats: false)) { }
        await foreach (var _ in runtime.GenerateAsync([5, 6, 7], new Fiddler.Kernels.Generation.GenerationOptions { MaxNewTokens = 2, StopOnEos = false })) { }
        Assert.All(await runtime.LayerStatsAsync(), s => Assert.Equal(2, s.Steps));
        Assert.Equal(layers * (1 + 3 + 2), scheduler.Router.LayerStats.Count);
    }

    [Fact]
    public async Task WarmUpAsync_StopRequested_EndsWithoutRunningThePrompts()
    {
        using var engine = HostExpertsEngine();
        await using var runtime = FiddlerRuntime.Start(engine.Model, null, (engine.Scheduler!, engine.Cpu!, engine.Stager));
        using var stop = new CancellationTokenSource();
        stop.Cancel();
        var saved = Console.Error;
        Console.SetError(TextWriter.Null);
        try { await ServeCommand.WarmUpAsync(runtime, engine.Config, 64, stop.Token); }
        finally { Console.SetError(saved); }
        Assert.Equal(0, engine.Scheduler!.Router.LayerStats.Count);
    }
}

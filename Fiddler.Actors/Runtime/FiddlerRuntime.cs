using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Configuration;
using Fiddler.Actors.Actors;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Text;

namespace Fiddler.Actors.Runtime;

/// <summary>
/// The in-process API: an actor system around one model. <see cref="GenerateAsync"/> streams tokens; requests run one
/// at a time in the GPU device actor. With offloading, each layer's routing goes through the router actor (which
/// feeds the layer actors) and each layer's CPU experts through the CPU worker pool actor.
/// </summary>
public sealed class FiddlerRuntime : IAsyncDisposable
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromMinutes(2);
    private readonly IActorRef _device;
    private OffloadExecutor? _executor;

    private FiddlerRuntime(ActorSystem system, IActorRef device, IActorRef? router, MixtralForCausalLM model)
    {
        System = system;
        _device = device;
        Router = router;
        Model = model;
    }

    public ActorSystem System { get; }
    public IActorRef? Router { get; }
    public MixtralForCausalLM Model { get; }

    /// <param name="offload">Null: every expert is resident. Else the scheduler, CPU backend and stager to route through actors.</param>
    /// <param name="prefetchRows">See <see cref="OffloadExecutor"/>.</param>
    /// <param name="spinKernelGate">See <see cref="OffloadExecutor"/>.</param>
    public static FiddlerRuntime Start(MixtralForCausalLM model, HfTokenizer? tokenizer,
        (IExpertScheduler Scheduler, ICpuExpertBackend Cpu, IWeightStager? Stager)? offload = null, Config? config = null,
        CpuMerge merge = CpuMerge.Gated, bool prefetchRows = true, bool spinKernelGate = false)
    {
        var system = ActorSystem.Create("fiddler", config ?? DefaultConfig());
        IActorRef? router = null;
        OffloadExecutor? executor = null;
        ActorScheduler? scheduler = null;
        if (offload is { } o)
        {
            router = system.ActorOf(RouterActor.Props(o.Scheduler, model.Config.NumHiddenLayers), "router");
            var pool = system.ActorOf(CpuWorkerPoolActor.Props(o.Cpu), "cpu-pool");
            scheduler = new ActorScheduler(router, CallTimeout);
            executor = new OffloadExecutor(scheduler, new ActorCpuBackend(pool, o.Cpu.Name, CallTimeout), o.Stager, merge,
                prefetchRows: prefetchRows, spinKernelGate: spinKernelGate);
            model.SetExpertExecutor(executor);
        }
        var device = system.ActorOf(GpuDeviceActor.Props(new Generator(model, tokenizer), scheduler is null ? null : counted => scheduler.CountInStats = counted), "gpu-device");
        return new FiddlerRuntime(system, device, router, model) { _executor = executor };
    }

    /// <summary>Streams the generated tokens; throws the engine's exception (e.g. ArgumentException for a bad request).</summary>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(int[] prompt, GenerationOptions options, CancellationToken cancel = default) =>
        GenerateAsync(prompt, options, countInStats: true, cancel);

    /// <summary>As <see cref="GenerateAsync(int[], GenerationOptions, CancellationToken)"/>; <paramref name="countInStats"/>
    /// false leaves this generation's layers out of <see cref="LayerStatsAsync"/> (a health probe).</summary>
    public async IAsyncEnumerable<GeneratedToken> GenerateAsync(int[] prompt, GenerationOptions options, bool countInStats,
        [EnumeratorCancellation] CancellationToken cancel = default)
    {
        var channel = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // A consumer that stops reading early stops the generation too (within one decode step).
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var done = _device.Ask<object>(new Generate(prompt, options, channel.Writer, stop.Token, countInStats), Timeout.InfiniteTimeSpan);
        try
        {
            await foreach (var token in channel.Reader.ReadAllAsync(CancellationToken.None)) yield return token;
        }
        finally
        {
            stop.Cancel();
        }
        if (await done is GenerationFailed f) throw f.Error;
    }

    /// <summary>Runs a generation to the end and returns its totals.</summary>
    public async Task<GenerationResult> RunAsync(int[] prompt, GenerationOptions options, Action<GeneratedToken>? onToken = null,
        CancellationToken cancel = default)
    {
        var channel = Channel.CreateUnbounded<GeneratedToken>();
        var done = _device.Ask<object>(new Generate(prompt, options, channel.Writer, cancel), Timeout.InfiniteTimeSpan);
        await foreach (var token in channel.Reader.ReadAllAsync(CancellationToken.None)) onToken?.Invoke(token);
        return await done switch
        {
            GenerationCompleted c => c.Result,
            GenerationFailed f => throw f.Error,
            var other => throw new InvalidOperationException($"unexpected reply {other}"),
        };
    }

    /// <summary>Per-layer statistics from the layer actors (offloading only).</summary>
    public async Task<LayerStats[]> LayerStatsAsync() =>
        Router is null ? [] : await Router.Ask<LayerStats[]>(GetLayerStats.Instance, CallTimeout);

    /// <summary>Starts the per-layer statistics over (offloading only; a no-op otherwise), e.g. after a start-up warm-up.</summary>
    public async Task ResetLayerStatsAsync()
    {
        if (Router is not null) await Router.Ask<Akka.Done>(ResetLayerStats.Instance, CallTimeout);
    }

    public static Config DefaultConfig()
    {
        using var stream = typeof(FiddlerRuntime).Assembly.GetManifestResourceStream("akka.hocon")
            ?? throw new InvalidOperationException("akka.hocon is not embedded in Fiddler.Actors");
        using var reader = new StreamReader(stream);
        return ConfigurationFactory.ParseString(reader.ReadToEnd());
    }

    public async ValueTask DisposeAsync()
    {
        Model.SetExpertExecutor(null);
        await System.Terminate();
        _executor?.Dispose();
    }
}

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
    // Cancelled by DisposeAsync: ends the running generation (within a layer or a decode step) and every queued one.
    // Not disposed: a generation that starts as the runtime is disposed may still link to it.
    private readonly CancellationTokenSource _shutdown = new();
    private int _disposed;

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
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var channel = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // A consumer that stops reading early stops the generation too (within one decode step), as does disposing the runtime.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel, _shutdown.Token);
        var request = new Generate(prompt, options, channel.Writer, stop.Token, countInStats, new GenerationTicket());
        var done = Submit(request, channel.Writer, cancel, out var withdraw);
        using var _ = withdraw;
        try
        {
            await foreach (var token in channel.Reader.ReadAllAsync(CancellationToken.None)) yield return token;
        }
        finally
        {
            stop.Cancel();
        }
        if (request.Ticket!.IsWithdrawn) yield break; // cancelled while queued: the device actor will skip it
        if (await Reply(done) is GenerationFailed f) throw f.Error;
    }

    /// <summary>Asks the device actor to run <paramref name="request"/>; if the runtime is disposed before it replies (the
    /// request still queued, or the system gone), <paramref name="tokens"/> ends with <see cref="ObjectDisposedException"/>,
    /// so no reader waits forever. While the request waits behind another generation, <paramref name="cancel"/> withdraws
    /// it (<see cref="GenerationTicket"/>): its tokens end at once, with none, and the caller does not wait for the reply
    /// (<paramref name="withdraw"/>: dispose when done); once it runs, the generator stops within a decode step.</summary>
    private Task<object> Submit(Generate request, ChannelWriter<GeneratedToken> tokens, CancellationToken cancel,
        out CancellationTokenRegistration withdraw)
    {
        var ticket = request.Ticket;
        withdraw = cancel.Register(() =>
        {
            if (ticket?.TryWithdraw() == true) tokens.TryComplete();
        });
        var done = _device.Ask<object>(request, Timeout.InfiniteTimeSpan, _shutdown.Token);
        done.ContinueWith(_ => tokens.TryComplete(Disposed()), CancellationToken.None,
            TaskContinuationOptions.NotOnRanToCompletion | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return done;
    }

    private async Task<object> Reply(Task<object> done)
    {
        try { return await done; }
        catch (OperationCanceledException) when (_shutdown.IsCancellationRequested) { throw Disposed(); }
    }

    private ObjectDisposedException Disposed() => new(nameof(FiddlerRuntime), "the runtime was disposed before the generation ended");

    /// <summary>Runs a generation to the end and returns its totals.</summary>
    public async Task<GenerationResult> RunAsync(int[] prompt, GenerationOptions options, Action<GeneratedToken>? onToken = null,
        CancellationToken cancel = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var channel = Channel.CreateUnbounded<GeneratedToken>();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel, _shutdown.Token);
        var request = new Generate(prompt, options, channel.Writer, stop.Token, Ticket: new GenerationTicket());
        var done = Submit(request, channel.Writer, cancel, out var withdraw);
        using var _ = withdraw;
        await foreach (var token in channel.Reader.ReadAllAsync(CancellationToken.None)) onToken?.Invoke(token);
        if (request.Ticket!.IsWithdrawn) // cancelled while queued, as a generation cancelled before its first token ends
            return new GenerationResult(prompt, [], "", FinishReason.Cancelled, TimeSpan.Zero, TimeSpan.Zero);
        return await Reply(done) switch
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

    /// <summary>
    /// Ends the running generation (it stops within a layer or a decode step) and every queued one (their readers get
    /// <see cref="ObjectDisposedException"/> or a cancelled finish), lets the device actor finish its message, then stops
    /// the actors and only then takes the executor out of the model and frees it.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _shutdown.Cancel();
        try { await _device.GracefulStop(CallTimeout); } // queued requests see the cancelled token and return at once
        catch (TaskCanceledException) { } // a generation stuck past the call timeout: stop the system anyway
        catch (AskTimeoutException) { }
        await System.Terminate();
        Model.SetExpertExecutor(null);
        _executor?.Dispose();
    }
}

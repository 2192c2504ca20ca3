using System.CommandLine;
using System.Runtime.InteropServices;
using Akka.Configuration;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using Fiddler.Actors.Runtime;
using Fiddler.Host.Cli;
using Fiddler.Host.Serving.Telemetry;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Host.Serving;

/// <summary>
/// <c>fiddler serve</c>: load a model, start the actor runtime, probe it, serve the OpenAI API until SIGINT/SIGTERM,
/// then drain: new requests get 503, in-flight ones get the shutdown timeout to finish, then are cancelled; exit 0.
/// A second signal skips the rest of the grace period.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face Mixtral directory (default: the embedded demo model)" };
        var host = new Option<string>("--host") { Description = "Address to listen on (loopback by default; * for all)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "HTTP port (0 = pick a free port and print it)", DefaultValueFactory = _ => 8080 };
        var grpcPort = new Option<int?>("--grpc-port") { Description = "HTTP/2 (h2c) port for gRPC (default: --port + 1; 0 = pick; -1 = none)" };
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on /v1/*" };
        var queueSize = new Option<int>("--queue-size") { Description = "Requests admitted at once (running + waiting); more get 429", DefaultValueFactory = _ => 16 };
        var modelId = new Option<string?>("--model-id") { Description = "Model name clients send (default: the model directory's name)" };
        var maxContext = new Option<int?>("--max-context") { Description = $"Cap on prompt + completion tokens (default: the model's max_position_embeddings, on CUDA at most what the GPU memory left after loading holds; {OffloadDefaultContext} with --gpu-budget, the KV cache it reserves)" };
        var shutdown = new Option<string>("--shutdown-timeout") { Description = "Grace period for in-flight requests on shutdown (e.g. 30s, 2m)", DefaultValueFactory = _ => "30s" };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var dtype = new Option<string?>("--dtype") { Description = "bfloat16 | float16 | float32 (default: the checkpoint's)" };
        var budget = new Option<string?>("--gpu-budget") { Description = "Offload: GPU memory for weights + KV cache (e.g. 24GiB); other experts stay in host memory" };
        var popularity = new Option<string?>("--popularity") { Description = "popularity.json from `fiddler profile` (placement order)" };
        var otel = new Option<string>("--otel") { Description = "Traces and metrics besides /metrics: console, otlp or none", DefaultValueFactory = _ => "none" };
        var otlpEndpoint = new Option<string?>("--otlp-endpoint") { Description = "OTLP receiver for --otel otlp (default: $OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317)" };
        var noWarmup = new Option<bool>("--no-warmup") { Description = "With --gpu-budget: take requests without first running the start-up warm-up (one prompt per batch size the router learns apart, then decode steps); the first request of each size is then slower" };
        var libtorch = new Option<string?>("--libtorch") { Description = $"Folder of a CUDA libtorch (default: ${TorchRuntime.LibTorchEnvironmentVariable}, else python3's torch)" };

        var command = new Command("serve", "Serve the model over an OpenAI-compatible HTTP API and gRPC");
        foreach (var o in new Option[] { model, host, port, grpcPort, apiKey, queueSize, modelId, maxContext, shutdown, otel, otlpEndpoint, device, dtype, budget, popularity, libtorch, noWarmup })
            command.Add(o);
        // A synchronous action: System.CommandLine's async actions install their own SIGINT/SIGTERM handling, which
        // would end the process before the drain.
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            var serve = new ServeOptions
            {
                Host = r.GetValue(host)!, Port = r.GetValue(port), GrpcPort = r.GetValue(grpcPort), ApiKey = r.GetValue(apiKey), LogToConsole = true,
                Telemetry = TelemetryOptionsOf(r.GetValue(otel)!, r.GetValue(otlpEndpoint)),
            };
            serve.Validate();
            if (r.GetValue(queueSize) < 1) throw new ArgumentException($"--queue-size must be at least 1, got {r.GetValue(queueSize)}");
            if (r.GetValue(maxContext) is < 2) throw new ArgumentException($"--max-context must be at least 2, got {r.GetValue(maxContext)}");
            if (r.GetValue(popularity) is not null && r.GetValue(budget) is null)
                throw new ArgumentException("--popularity orders the experts placed under --gpu-budget: give --gpu-budget too");
            var grace = ParseDuration(r.GetValue(shutdown)!, "--shutdown-timeout");
            string dir = DefaultModel.Resolve(r.GetValue(model));
            // Before the weights: a template that cannot run fails start-up in a second, not after a long load.
            var chat = ChatTemplates.Load(dir);
            var run = new Run(serve, grace, dir, r.GetValue(modelId) ?? ModelIdOf(dir), r.GetValue(queueSize), r.GetValue(maxContext),
                r.GetValue(device)!, r.GetValue(dtype), r.GetValue(budget), r.GetValue(popularity), chat, Warmup: !r.GetValue(noWarmup));
            using var signals = new ShutdownSignals();
            return RunAsync(run, signals.First, signals.Second).GetAwaiter().GetResult();
        });
        return command;
    }

    /// <summary>--otel and --otlp-endpoint; an endpoint without --otel otlp is a mistake worth an error.</summary>
    public static TelemetryOptions TelemetryOptionsOf(string exporter, string? otlpEndpoint)
    {
        var kind = TelemetryOptions.ParseExporter(exporter);
        Uri? endpoint = null;
        if (otlpEndpoint is not null)
        {
            if (kind != TelemetryExporter.Otlp) throw new ArgumentException("--otlp-endpoint needs --otel otlp");
            if (!Uri.TryCreate(otlpEndpoint, UriKind.Absolute, out endpoint) || endpoint.Scheme is not ("http" or "https"))
                throw new ArgumentException($"--otlp-endpoint: '{otlpEndpoint}' is not an http(s) URL such as http://localhost:4317");
        }
        return new TelemetryOptions { Exporter = kind, OtlpEndpoint = endpoint };
    }

    public sealed record Run(ServeOptions Serve, TimeSpan Grace, string ModelDir, string ModelId, int QueueSize, int? MaxContext,
        string Device, string? DType, string? GpuBudget, string? Popularity, ChatFormatter? Chat, bool Warmup = true);

    /// <summary>Serves until <paramref name="stop"/>, then drains; <paramref name="skipGrace"/> cuts the drain short.</summary>
    public static async Task<int> RunAsync(Run run, CancellationToken stop, CancellationToken skipGrace = default)
    {
        var dev = TorchRuntime.Initialize(run.Device);
        var dt = run.DType is { } d ? TorchRuntime.ParseDType(d) : (TorchSharp.torch.ScalarType?)null;
        Console.Error.WriteLine($"fiddler: loading {run.ModelDir}");
        int? context = ServedContext(run.MaxContext, offload: run.GpuBudget is not null);
        using var engine = run.GpuBudget is { } b
            ? OffloadEngine.Create(new EngineOptions
            {
                ModelDir = run.ModelDir, Device = dev, DType = dt, GpuBudgetBytes = MemoryBudget.Parse(b), PopularityPath = run.Popularity,
                ContextTokens = context!.Value,
            }, m => Console.Error.WriteLine(m))
            : null;
        // Without --max-context each request's KV cache is sized by the request, so only a capped context is counted here.
        if (engine is null) OffloadEngine.CheckWholeModelFits(run.ModelDir, dev, dt, context ?? 0);
        using var loaded = engine is null ? ModelLoader.Load(run.ModelDir, new LoadOptions(dev, dt)) : null;
        var (model, tokenizer) = engine is not null ? (engine.Model, engine.Tokenizer) : (loaded!.Model, loaded.Tokenizer);
        if (engine is null && context is null) context = CapByFreeMemory(model, dev);
        (IExpertScheduler, ICpuExpertBackend, IWeightStager?)? offload = engine?.Scheduler is { } scheduler ? (scheduler, engine.Cpu!, engine.Stager) : null;

        // stdout carries only the URL line (scripts read it): Akka's INFO lines (e.g. its shutdown notice) stay off.
        var akka = ConfigurationFactory.ParseString("akka.loglevel = WARNING\nakka.stdout-loglevel = WARNING").WithFallback(FiddlerRuntime.DefaultConfig());
        await using var runtime = FiddlerRuntime.Start(model, tokenizer, offload, akka);
        if (engine?.Scheduler is not null && run.Warmup)
        {
            // Before listening, as loading is: a client cannot reach a server that is still learning its lanes' speeds.
            try { await WarmUpAsync(runtime, model.Config, context!.Value, stop); }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { return 0; }
            catch (Exception e)
            {
                // The path every request takes failed: say so in one line, as a failed start-up probe does.
                Console.Error.WriteLine($"fiddler: error: the engine failed its start-up warm-up: {CliErrors.OneLine(e.Message)}");
                return FiddlerCli.InternalErrorExitCode;
            }
            if (stop.IsCancellationRequested) return 0;
        }
        await using var service = new InferenceService(runtime, tokenizer, run.Chat,
            new InferenceServiceOptions(run.ModelId, run.QueueSize)
            {
                MaxContext = context,
                EngineFailureLog = e => Console.Error.WriteLine($"fiddler: engine failure in a request (re-probing the engine): {e}"),
            });
        // Disposed after the server (declared before it): no scrape reads a stopped poller.
        await using var stats = new EngineStatsPoller(runtime.LayerStatsAsync);
        await using var server = await ServerHost.StartAsync(run.Serve, service, stop, () => stats.Latest);
        stats.Start();
        try
        {
            await service.StartAsync(stop);
        }
        catch (InvalidOperationException e)
        {
            Console.Error.WriteLine($"fiddler: error: {CliErrors.OneLine(e.Message)}");
            return FiddlerCli.InternalErrorExitCode;
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            return 0;
        }
        static string Show(Uri u) => u.GetLeftPart(UriPartial.Authority);
        Console.WriteLine($"Listening on {Show(server.Url)} (model '{service.Model.Id}', context {service.Model.ContextLength}, " +
            $"chat template {service.Model.ChatTemplate ?? "none"}{(server.GrpcUrl is { } g ? $"; gRPC h2c on {Show(g)}" : "")})");
        Console.Out.Flush();

        try { await Task.Delay(Timeout.Infinite, stop); }
        catch (OperationCanceledException) { }
        Console.Error.WriteLine($"fiddler: shutting down: refusing new requests, {service.QueueDepth} in flight get {run.Grace.TotalSeconds:0.#} s");
        await service.ShutdownAsync(run.Grace, skipGrace);
        await server.StopAsync(TimeSpan.FromSeconds(5));
        Console.Error.WriteLine("fiddler: stopped");
        return 0;
    }

    /// <summary>
    /// The offloading engine's start-up warm-up (<see cref="WarmupPlan"/>) through the actor runtime that will serve:
    /// one prompt per batch size the router learns apart, decode steps after the first; then the per-layer statistics
    /// start over, so the warm-up's steps do not count in /metrics (nor do the start-up health probe's, which runs after: it generates uncounted).
    /// A failure here fails start-up (the same path would fail every request).
    /// </summary>
    public static async Task WarmUpAsync(FiddlerRuntime runtime, Fiddler.Kernels.Config.MixtralConfig config, int context, CancellationToken stop)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int[] lengths = WarmupPlan.PromptLengths(config, context);
        if (lengths.Length == 0) return; // a context too short for a warm-up prompt and its decode steps
        for (int k = 0; k < lengths.Length && !stop.IsCancellationRequested; k++)
        {
            var options = new Fiddler.Kernels.Generation.GenerationOptions { MaxNewTokens = k == 0 ? WarmupPlan.DecodeSteps + 1 : 1, StopOnEos = false };
            await foreach (var _ in runtime.GenerateAsync(WarmupPlan.Prompt(lengths[k], config.VocabSize, seed: k), options, stop)) { }
        }
        if (stop.IsCancellationRequested) return; // stopping: no server will read the statistics
        await runtime.ResetLayerStatsAsync();
        Console.Error.WriteLine($"fiddler: warm-up: prompts of {string.Join(", ", lengths)} tokens and {WarmupPlan.DecodeSteps} decode steps in {clock.Elapsed.TotalSeconds:0.0} s");
    }

    /// <summary>
    /// Without a budget or --max-context on CUDA: the served context, capped where the memory left after loading holds
    /// a request's KV cache and prompt activations (a chat request without max_tokens takes the whole context, 4 GiB of
    /// cache at Mixtral's 32k positions). Null (the model's context) when all of it fits or off CUDA.
    /// </summary>
    private static int? CapByFreeMemory(Fiddler.Kernels.Modules.MixtralForCausalLM model, TorchSharp.torch.Device dev)
    {
        if (OffloadEngine.ContextThatFitsFreeMemory(model.Config, model.DType, dev) is not int fits || fits >= model.Config.MaxPositionEmbeddings)
            return null;
        if (fits < 2)
            throw new PlacementException("the GPU has no room left for a KV cache after loading the model: give --gpu-budget to keep some experts in host memory");
        Console.Error.WriteLine($"fiddler: context capped at {fits} of the model's {model.Config.MaxPositionEmbeddings} tokens: " +
                                "the GPU memory left after loading holds that much KV cache (--gpu-budget keeps experts in host memory)");
        return fits;
    }

    /// <summary>The KV cache (in tokens) the offload planner reserves when --max-context is not given.</summary>
    public const int OffloadDefaultContext = 4096;

    /// <summary>
    /// The context cap the service enforces: --max-context, else with offloading the context the placement planner
    /// reserved KV cache for (a request allocates its whole KV cache up front, so admitting the model's full context,
    /// e.g. a chat request without max_tokens, would allocate far beyond the GPU budget), else none (the model's).
    /// </summary>
    public static int? ServedContext(int? maxContext, bool offload) => maxContext ?? (offload ? OffloadDefaultContext : null);

    /// <summary>"30s", "2m", "500ms", "1h" or plain seconds.</summary>
    public static TimeSpan ParseDuration(string text, string option)
    {
        string t = text.Trim();
        (string number, double scale) = t.EndsWith("ms") ? (t[..^2], 0.001) : t.EndsWith('s') ? (t[..^1], 1)
            : t.EndsWith('m') ? (t[..^1], 60) : t.EndsWith('h') ? (t[..^1], 3600) : (t, 1);
        if (!double.TryParse(number, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v)
            || !double.IsFinite(v) || v < 0 || v * scale > TimeSpan.FromDays(1).TotalSeconds)
            throw new ArgumentException($"{option}: '{text}' is not a duration such as 30s, 2m or 500ms");
        return TimeSpan.FromSeconds(v * scale);
    }

    public static string ModelIdOf(string dir) => Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar, '/'));

    /// <summary>SIGINT/SIGTERM: the first starts the drain, the next skips what is left of the grace period (one
    /// within a second of the first is the same signal delivered twice: see <see cref="ShutdownSignalCounter"/>).</summary>
    private sealed class ShutdownSignals : IDisposable
    {
        private readonly CancellationTokenSource _first = new(), _second = new();
        private readonly ShutdownSignalCounter _counter = new(static () => System.Diagnostics.Stopwatch.GetElapsedTime(0));
        private readonly PosixSignalRegistration[] _registrations;

        public ShutdownSignals() => _registrations =
            [PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle)];

        public CancellationToken First => _first.Token;
        public CancellationToken Second => _second.Token;

        private void Handle(PosixSignalContext context)
        {
            context.Cancel = true; // no default termination: the drain ends the process
            switch (_counter.Next())
            {
                case ShutdownSignalCounter.Step.Drain: _first.Cancel(); break;
                case ShutdownSignalCounter.Step.SkipGrace: _second.Cancel(); break;
            }
        }

        public void Dispose()
        {
            foreach (var r in _registrations) r.Dispose();
            _first.Dispose();
            _second.Dispose();
        }
    }
}

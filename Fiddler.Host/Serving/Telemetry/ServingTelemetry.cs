using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>
/// The serving layer's traces and metrics, both named <see cref="Name"/>. Request instruments are recorded by
/// <see cref="InstrumentedInferenceService"/>; the queue depth and engine instruments are observed when a reader
/// collects, from the callbacks given here (which must be cheap: each engine instrument calls its callback once per
/// collection).
/// </summary>
public sealed class ServingTelemetry : IDisposable
{
    public const string Name = "Fiddler.Serving";

    // Frontends set this before Admit/RunAsync so that one decorator can tag requests by frontend; an AsyncLocal
    // because the contract's calls carry no frontend (it is scoped to the caller's async flow).
    private static readonly AsyncLocal<string?> s_frontend = new();

    /// <summary>The frontend serving the current async flow ("grpc", "openai"); tags request metrics and spans.</summary>
    public static string? CurrentFrontend { get => s_frontend.Value; set => s_frontend.Value = value; }

    public ActivitySource Source { get; } = new(Name);
    public Meter Meter { get; } = new(Name);

    internal Counter<long> Requests { get; }
    internal Counter<long> TokensGenerated { get; }
    internal Histogram<double> TimeToFirstToken { get; }
    internal Histogram<double> DecodeRate { get; }
    internal Histogram<double> RequestDuration { get; }

    // Seconds, from a cached one-token reply to a long generation behind a full queue.
    private static readonly double[] s_secondsBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
    // Offloaded Mixtral decodes at a few tokens/s, a resident tiny model at hundreds.
    private static readonly double[] s_rateBuckets = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

    public ServingTelemetry(Func<int>? queueDepth = null, Func<EngineStatsSnapshot?>? engineStats = null)
    {
        Requests = Meter.CreateCounter<long>("fiddler.requests", "{request}", "Requests that reached the engine, by frontend and outcome.");
        TokensGenerated = Meter.CreateCounter<long>("fiddler.tokens.generated", "{token}", "Tokens generated and streamed.");
        TimeToFirstToken = Meter.CreateHistogram("fiddler.time_to_first_token", "s", "From the job's start (queue wait included) to its first token.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = s_secondsBuckets });
        DecodeRate = Meter.CreateHistogram("fiddler.decode.rate", "{token}/s", "Decode tokens per second of a request (tokens after the first).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = s_rateBuckets });
        RequestDuration = Meter.CreateHistogram("fiddler.request.duration", "s", "From the job's start to its last event.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = s_secondsBuckets });
        if (queueDepth is not null)
        {
            Meter.CreateObservableGauge("fiddler.queue.depth", queueDepth, "{request}", "Requests admitted and not finished (running + waiting).");
        }
        if (engineStats is not null) CreateEngineInstruments(engineStats);
    }

    private void CreateEngineInstruments(Func<EngineStatsSnapshot?> stats)
    {
        IEnumerable<Measurement<T>> Observe<T>(Func<EngineStatsSnapshot, T> pick) where T : struct =>
            stats() is { } s ? [new Measurement<T>(pick(s))] : [];

        Meter.CreateObservableGauge("fiddler.engine.expert.gpu_hit_rate", () => Observe(s => s.GpuHitRate), "1",
            "Fraction of routed experts that were resident on the GPU, since start.");
        Meter.CreateObservableCounter("fiddler.engine.layer.steps", () => Observe(s => s.Steps), "{step}", "MoE layer forward steps.");
        Meter.CreateObservableCounter("fiddler.engine.expert.routed", () => Observe(s => s.ExpertsChosen), "{expert}", "Experts picked by the router (tokens x top-k).");
        Meter.CreateObservableCounter("fiddler.engine.expert.cpu", () => Observe(s => s.ExpertsOnCpu), "{expert}", "Routed experts computed on the CPU.");
        Meter.CreateObservableCounter("fiddler.engine.expert.cpu_time", () => Observe(s => s.CpuExpertTime.TotalSeconds), "s", "Time in the CPU expert lane.");
        Meter.CreateObservableCounter("fiddler.engine.layer.time", () => Observe(s => s.LayerTime.TotalSeconds), "s", "Time in the MoE layers (GPU work and waits on the CPU lane).");
        Meter.CreateObservableCounter("fiddler.engine.expert.transfers", () => Observe(s => s.Transfers), "{transfer}", "Experts copied host to GPU.");
        Meter.CreateObservableCounter("fiddler.engine.pcie.transferred", () => Observe(s => s.TransferBytes), "By", "Bytes of expert weights copied host to GPU.");
    }

    public void Dispose()
    {
        Meter.Dispose();
        Source.Dispose();
    }

    /// <summary>Values of the fiddler.requests outcome tag.</summary>
    public static class Outcomes
    {
        public const string Ok = "ok";
        public const string Cancelled = "cancelled";
        public const string QueueFull = "queue_full";
        public const string Unavailable = "unavailable";
        public const string Invalid = "invalid";
        public const string Error = "error";
    }

    /// <summary>Span and metric tag names (OpenTelemetry GenAI conventions where one exists).</summary>
    public static class Tags
    {
        public const string Frontend = "fiddler.frontend";
        public const string Outcome = "fiddler.outcome";
        public const string RequestId = "fiddler.request_id";
        public const string Model = "gen_ai.request.model";
        public const string PromptTokens = "gen_ai.usage.input_tokens";
        public const string CompletionTokens = "gen_ai.usage.output_tokens";
        public const string FinishReasons = "gen_ai.response.finish_reasons";
    }
}

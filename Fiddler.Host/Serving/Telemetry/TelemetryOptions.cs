using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>Where traces and metrics go besides <c>/metrics</c> (which is always served).</summary>
public enum TelemetryExporter
{
    /// <summary>Metrics on <c>/metrics</c> only; no traces are recorded.</summary>
    None,
    /// <summary>Spans and (every minute) metrics printed to stdout, for a quick look.</summary>
    Console,
    /// <summary>
    /// Spans and metrics pushed over OTLP (gRPC, port 4317 by default) to a collector, Jaeger, Tempo, etc. The endpoint
    /// is <see cref="TelemetryOptions.OtlpEndpoint"/>, else the standard OTEL_EXPORTER_OTLP_ENDPOINT (and the other
    /// OTEL_EXPORTER_OTLP_* variables), else http://localhost:4317.
    /// </summary>
    Otlp,
}

/// <summary>
/// Telemetry settings of <c>fiddler serve</c>: <c>--otel console|otlp|none</c> (<see cref="Exporter"/>, default none)
/// and <c>--otlp-endpoint URL</c> (<see cref="OtlpEndpoint"/>). Prometheus metrics are always on <c>/metrics</c>.
/// </summary>
public sealed record TelemetryOptions
{
    public TelemetryExporter Exporter { get; init; } = TelemetryExporter.None;

    /// <summary>OTLP receiver, e.g. http://collector:4317; null defers to OTEL_EXPORTER_OTLP_ENDPOINT.</summary>
    public Uri? OtlpEndpoint { get; init; }

    /// <summary>The service.name resource attribute.</summary>
    public string ServiceName { get; init; } = "fiddler";

    /// <summary>Extra trace setup after Fiddler's (tests add an in-memory exporter here).</summary>
    public Action<TracerProviderBuilder>? ConfigureTracing { get; init; }

    /// <summary>Extra metric setup after Fiddler's.</summary>
    public Action<MeterProviderBuilder>? ConfigureMetrics { get; init; }

    /// <summary>Parses an <c>--otel</c> value (console, otlp, none; any case).</summary>
    public static TelemetryExporter ParseExporter(string value) => value.Trim().ToLowerInvariant() switch
    {
        "none" => TelemetryExporter.None,
        "console" => TelemetryExporter.Console,
        "otlp" => TelemetryExporter.Otlp,
        _ => throw new ArgumentException($"--otel must be console, otlp or none, got '{value}'", nameof(value)),
    };
}

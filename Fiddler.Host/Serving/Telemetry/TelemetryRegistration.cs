using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>
/// Wires OpenTelemetry into the server: the <see cref="ServingTelemetry.Name"/> source and meter plus ASP.NET Core's
/// own, exported as <see cref="TelemetryOptions"/> says, and Prometheus text on <c>/metrics</c>.
/// </summary>
public static class TelemetryRegistration
{
    public const string MetricsPath = "/metrics";

    public static IServiceCollection AddFiddlerTelemetry(this IServiceCollection services, TelemetryOptions options)
    {
        var otel = services.AddOpenTelemetry().ConfigureResource(r => r.AddService(options.ServiceName));
        if (options.Exporter != TelemetryExporter.None || options.ConfigureTracing is not null)
        {
            otel.WithTracing(t =>
            {
                // Scrapes every few seconds would drown the request traces.
                t.AddSource(ServingTelemetry.Name).AddAspNetCoreInstrumentation(o => o.Filter = c => c.Request.Path != MetricsPath);
                if (options.Exporter == TelemetryExporter.Console) t.AddConsoleExporter();
                if (options.Exporter == TelemetryExporter.Otlp) t.AddOtlpExporter(o => SetEndpoint(o, options));
                options.ConfigureTracing?.Invoke(t);
            });
        }
        otel.WithMetrics(m =>
        {
            m.AddMeter(ServingTelemetry.Name).AddAspNetCoreInstrumentation().AddPrometheusExporter();
            if (options.Exporter == TelemetryExporter.Console) m.AddConsoleExporter();
            if (options.Exporter == TelemetryExporter.Otlp) m.AddOtlpExporter(o => SetEndpoint(o, options));
            options.ConfigureMetrics?.Invoke(m);
        });
        return services;
    }

    /// <summary>
    /// Registers <paramref name="engine"/> as the container's <see cref="IInferenceService"/>, wrapped once in
    /// <see cref="InstrumentedInferenceService"/>, with its <see cref="ServingTelemetry"/> (queue depth from the engine,
    /// engine gauges from <paramref name="engineStats"/>).
    /// </summary>
    public static IServiceCollection AddInstrumentedInference(this IServiceCollection services, IInferenceService engine,
        Func<EngineStatsSnapshot?>? engineStats = null)
    {
        services.AddSingleton(_ => new ServingTelemetry(() => engine.QueueDepth, engineStats));
        services.AddSingleton<IInferenceService>(sp => new InstrumentedInferenceService(engine, sp.GetRequiredService<ServingTelemetry>()));
        return services;
    }

    /// <summary>Serves Prometheus text on <c>/metrics</c> (needs <see cref="AddFiddlerTelemetry"/>).</summary>
    public static WebApplication MapFiddlerMetrics(this WebApplication app)
    {
        app.MapPrometheusScrapingEndpoint(MetricsPath);
        return app;
    }

    private static void SetEndpoint(OpenTelemetry.Exporter.OtlpExporterOptions o, TelemetryOptions options)
    {
        // Left alone, the exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself.
        if (options.OtlpEndpoint is not null) o.Endpoint = options.OtlpEndpoint;
    }
}

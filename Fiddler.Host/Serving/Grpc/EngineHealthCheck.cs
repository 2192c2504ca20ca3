using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>The engine's readiness as an ASP.NET Core health check (and so as grpc.health.v1 SERVING / NOT_SERVING).</summary>
public sealed class EngineHealthCheck(IInferenceService engine) : IHealthCheck
{
    public const string Name = "engine";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var h = engine.Health;
        string description = h.Detail is null ? h.Status : $"{h.Status}: {h.Detail}";
        return Task.FromResult(h.Ready ? HealthCheckResult.Healthy(description) : HealthCheckResult.Unhealthy(description));
    }
}

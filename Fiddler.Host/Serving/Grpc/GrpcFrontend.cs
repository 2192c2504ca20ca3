using Fiddler.Host.Serving.Grpc.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>
/// Registers and maps the gRPC frontend (fiddler.v1.Inference and grpc.health.v1.Health). It resolves
/// <see cref="IInferenceService"/> from the container. gRPC needs HTTP/2, and cleartext HTTP/2 needs an endpoint that
/// speaks only HTTP/2 (prior knowledge), so the host opens a separate port with <c>HttpProtocols.Http2</c>.
/// </summary>
public static class GrpcFrontend
{
    public static IServiceCollection AddFiddlerGrpc(this IServiceCollection services)
    {
        services.AddGrpc();
        // Service "" (the whole server) and "fiddler.v1.Inference" both report the engine's readiness.
        services.AddGrpcHealthChecks(o => o.Services.Map(Inference.Descriptor.FullName, c => c.Name == EngineHealthCheck.Name))
            .AddCheck<EngineHealthCheck>(EngineHealthCheck.Name);
        return services;
    }

    /// <summary>Maps the services; with <paramref name="port"/>, only requests to that port reach them.</summary>
    public static WebApplication MapFiddlerGrpc(this WebApplication app, int? port = null)
    {
        var inference = app.MapGrpcService<InferenceGrpcService>();
        var health = app.MapGrpcHealthChecksService();
        if (port is int p)
        {
            inference.RequireHost($"*:{p}");
            health.RequireHost($"*:{p}");
        }
        return app;
    }
}

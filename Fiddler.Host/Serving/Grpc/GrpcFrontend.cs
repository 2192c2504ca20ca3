using Fiddler.Host.Serving.Grpc.V1;
using Grpc.AspNetCore.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>
/// Registers and maps the gRPC frontend (fiddler.v1.Inference and grpc.health.v1.Health). It resolves
/// <see cref="IInferenceService"/> from the container. gRPC needs HTTP/2, and cleartext HTTP/2 needs an endpoint that
/// speaks only HTTP/2 (prior knowledge), so the host opens a separate port with <c>HttpProtocols.Http2</c>.
/// </summary>
public static class GrpcFrontend
{
    /// <param name="apiKey">When set, calls need <c>authorization: Bearer KEY</c> (<see cref="ApiKeyInterceptor"/>).</param>
    public static IServiceCollection AddFiddlerGrpc(this IServiceCollection services, string? apiKey = null)
    {
        services.AddGrpc(o =>
        {
            if (apiKey is not null) o.Interceptors.Add<ApiKeyInterceptor>(apiKey);
        });
        // Service "" (the whole server) and "fiddler.v1.Inference" both report the engine's readiness.
        services.AddGrpcHealthChecks(o => o.Services.Map(Inference.Descriptor.FullName, c => c.Name == EngineHealthCheck.Name))
            .AddCheck<EngineHealthCheck>(EngineHealthCheck.Name);
        return services;
    }

    /// <summary>Maps the services; with <paramref name="port"/>, only connections to that local port reach them.</summary>
    public static WebApplication MapFiddlerGrpc(this WebApplication app, int? port = null) =>
        app.MapFiddlerGrpc(port is int p ? () => p : null);

    /// <summary>
    /// Maps the services, reachable only through connections to the local port <paramref name="port"/> answers at
    /// request time (a port picked at bind time is known only then); a gRPC path on another port gets 404.
    /// </summary>
    public static WebApplication MapFiddlerGrpc(this WebApplication app, Func<int?>? port)
    {
        if (port is not null)
        {
            // Runs after routing (WebApplication routes first), so the endpoint is known; the connection's local port
            // tells which listener it came through, whatever Host header the client sent.
            app.Use((ctx, next) =>
            {
                if (ctx.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is not null && ctx.Connection.LocalPort != port())
                {
                    ctx.Response.StatusCode = StatusCodes.Status404NotFound;
                    return Task.CompletedTask;
                }
                return next(ctx);
            });
        }
        app.MapGrpcService<InferenceGrpcService>();
        app.MapGrpcHealthChecksService();
        return app;
    }
}

using System.Net;
using Fiddler.Host.Serving;
using Fiddler.Host.Serving.Grpc;
using Fiddler.Host.Serving.Grpc.V1;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Fiddler.Tests.Serving;

/// <summary>
/// A real Kestrel on 127.0.0.1 with an HTTP/2-only (prior knowledge) port for gRPC and an HTTP/1.1 port for plain
/// HTTP, as <c>fiddler serve</c> lays them out, plus a gRPC channel to it.
/// </summary>
internal sealed class GrpcTestServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    public GrpcChannel Channel { get; }
    public Inference.InferenceClient Client { get; }
    public Uri GrpcAddress { get; }
    public Uri HttpAddress { get; }

    private GrpcTestServer(WebApplication app, Uri grpc, Uri http)
    {
        _app = app;
        GrpcAddress = grpc;
        HttpAddress = http;
        Channel = GrpcChannel.ForAddress(grpc);
        Client = new Inference.InferenceClient(Channel);
    }

    public IServiceProvider Services => _app.Services;

    /// <summary>Starts a server whose container holds <see cref="IInferenceService"/> (registered by
    /// <paramref name="configure"/>, or <paramref name="engine"/> as is).</summary>
    public static async Task<GrpcTestServer> StartAsync(IInferenceService? engine, Action<IServiceCollection>? configure = null,
        Action<WebApplication>? map = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        ListenOptions? grpc = null, http = null;
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0, o => { o.Protocols = HttpProtocols.Http2; grpc = o; });
            k.Listen(IPAddress.Loopback, 0, o => { o.Protocols = HttpProtocols.Http1; http = o; });
        });
        if (engine is not null) builder.Services.AddSingleton(engine);
        configure?.Invoke(builder.Services);
        builder.Services.AddFiddlerGrpc();
        var app = builder.Build();
        app.MapFiddlerGrpc();
        map?.Invoke(app);
        await app.StartAsync();
        // Kestrel writes the port it bound for port 0 back into the listen options.
        return new GrpcTestServer(app, new Uri($"http://{grpc!.IPEndPoint}"), new Uri($"http://{http!.IPEndPoint}"));
    }

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}

using System.Security.Cryptography;
using System.Text;
using Fiddler.Host.Serving.Grpc;
using Fiddler.Host.Serving.OpenAi;
using Fiddler.Host.Serving.Telemetry;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Fiddler.Host.Serving;

/// <summary>
/// The Kestrel host of the frontends: OpenAI HTTP on <see cref="ServeOptions.Port"/> (HTTP/1.1 + HTTP/2) and an
/// HTTP/2-only endpoint for gRPC (cleartext HTTP/2 needs prior knowledge, which Kestrel offers only on an endpoint
/// without HTTP/1.1). Signals are not handled here: the caller decides when to drain and stop (ServeCommand on
/// SIGINT/SIGTERM, tests directly), so that shutdown first refuses new work with 503 while in-flight requests finish.
/// The engine is wrapped once in <see cref="InstrumentedInferenceService"/> and every frontend resolves that wrapper
/// from the container, so OpenAI and gRPC requests are traced and measured alike; <c>/metrics</c> serves Prometheus text.
/// </summary>
public sealed class ServerHost : IAsyncDisposable
{
    private ServerHost(WebApplication app, Uri url, Uri? grpcUrl)
    {
        App = app;
        Url = url;
        GrpcUrl = grpcUrl;
    }

    public WebApplication App { get; }

    /// <summary>The bound OpenAI URL, e.g. http://127.0.0.1:8080/ (the picked port when 0 was asked for).</summary>
    public Uri Url { get; }

    /// <summary>The bound HTTP/2 (gRPC) URL, or null when none was opened.</summary>
    public Uri? GrpcUrl { get; }

    /// <param name="engine">The undecorated engine; the frontends see it through the telemetry decorator.</param>
    /// <param name="engineStats">The latest engine totals for the fiddler_engine_* instruments (e.g. <see cref="EngineStatsPoller.Latest"/>).</param>
    public static WebApplication Build(ServeOptions options, IInferenceService engine, Func<EngineStatsSnapshot?>? engineStats = null)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(ServerHost).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        if (options.LogToConsole)
            builder.Logging.AddSimpleConsole(c => c.SingleLine = true).SetMinimumLevel(LogLevel.Warning)
                // Kestrel warns at every start that cleartext Http1AndHttp2 serves HTTP/1.1 only: known, hence the h2c endpoint.
                .AddFilter("Microsoft.AspNetCore.Server.Kestrel", LogLevel.Error);
        builder.Services.AddSingleton<IHostLifetime, CallerLifetime>();
        builder.Services.AddFiddlerTelemetry(options.Telemetry).AddInstrumentedInference(engine, engineStats);
        if (options.ResolvedGrpcPort is not null) builder.Services.AddFiddlerGrpc(options.ApiKey);
        var endpoints = new BoundEndpoints();
        builder.Services.AddSingleton(endpoints);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            k.Listen(options.Address, options.Port, l =>
            {
                l.Protocols = HttpProtocols.Http1AndHttp2;
                endpoints.Http = l;
            });
            if (options.ResolvedGrpcPort is int grpc)
                k.Listen(options.Address, grpc, l =>
                {
                    l.Protocols = HttpProtocols.Http2;
                    endpoints.Grpc = l;
                });
        });
        var app = builder.Build();
        app.Use(CatchAll);
        app.UseStatusCodePages(StatusCodeErrorAsync);
        if (options.ApiKey is { } key) app.Use(RequireBearer(key));
        app.MapOpenAi(app.Services.GetRequiredService<IInferenceService>());
        app.MapFiddlerMetrics();
        // Port 0 binds at start: the filter reads the bound port per request.
        if (options.ResolvedGrpcPort is not null) app.MapFiddlerGrpc(() => endpoints.Grpc?.IPEndPoint?.Port);
        app.MapFallback(ctx => OpenAiError.NotFound($"no route for {ctx.Request.Method} {ctx.Request.Path}").WriteAsync(ctx.Response));
        return app;
    }

    /// <summary>Builds and starts the server; the URLs are the bound ones.</summary>
    public static async Task<ServerHost> StartAsync(ServeOptions options, IInferenceService engine, CancellationToken cancel = default,
        Func<EngineStatsSnapshot?>? engineStats = null)
    {
        var app = Build(options, engine, engineStats);
        try
        {
            await app.StartAsync(cancel);
        }
        catch
        {
            await app.DisposeAsync();
            throw;
        }
        var endpoints = app.Services.GetRequiredService<BoundEndpoints>();
        return new ServerHost(app, UrlOf(endpoints.Http!), endpoints.Grpc is { } g ? UrlOf(g) : null);
    }

    private int _stopped;

    /// <summary>
    /// Stops listening; requests still running get <paramref name="timeout"/> to end (drain the service first). Once:
    /// later calls (and <see cref="DisposeAsync"/>) do not wait for a stuck client again.
    /// </summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        using var cts = new CancellationTokenSource(timeout);
        await App.StopAsync(cts.Token);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(TimeSpan.FromSeconds(5));
        await App.DisposeAsync();
    }

    private static Uri UrlOf(ListenOptions l)
    {
        var ep = l.IPEndPoint!;
        string host = ep.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ep.Address}]" : ep.Address.ToString();
        return new Uri($"http://{host}:{ep.Port}");
    }

    /// <summary>No request may end in an unhandled exception (that would be an empty 500): it becomes OpenAI's error JSON.</summary>
    private static async Task CatchAll(HttpContext ctx, RequestDelegate next)
    {
        try
        {
            await next(ctx);
        }
        catch (Exception) when (ctx.RequestAborted.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            ctx.RequestServices.GetService<ILoggerFactory>()?.CreateLogger<ServerHost>()
                .LogError(e, "{Method} {Path} failed", ctx.Request.Method, ctx.Request.Path);
            await OpenAiError.From(e).WriteAsync(ctx.Response);
        }
    }

    /// <summary>Bodiless errors from routing (405, 404 of a route's constraint) in OpenAI's schema too.</summary>
    private static Task StatusCodeErrorAsync(StatusCodeContext status)
    {
        var ctx = status.HttpContext;
        int code = ctx.Response.StatusCode;
        string message = code == 405 ? $"method {ctx.Request.Method} is not allowed on {ctx.Request.Path}" : $"HTTP {code}";
        return new OpenAiError(code, message, code >= 500 ? OpenAiError.ServerError : OpenAiError.InvalidRequest).WriteAsync(ctx.Response);
    }

    private static Func<HttpContext, RequestDelegate, Task> RequireBearer(string key)
    {
        byte[] expected = Encoding.UTF8.GetBytes(key);
        return (ctx, next) =>
        {
            if (!ctx.Request.Path.StartsWithSegments("/v1")) return next(ctx);
            string header = ctx.Request.Headers.Authorization.ToString();
            if (header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)
                && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[7..].Trim()), expected))
                return next(ctx);
            string message = header.Length == 0
                ? "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                : "Incorrect API key provided.";
            return new OpenAiError(401, message, OpenAiError.InvalidRequest, null, "invalid_api_key").WriteAsync(ctx.Response);
        };
    }

    /// <summary>The listen options Kestrel binds; after start they hold the actual ports.</summary>
    private sealed class BoundEndpoints
    {
        public ListenOptions? Http { get; set; }
        public ListenOptions? Grpc { get; set; }
    }

    /// <summary>Replaces the console lifetime: Ctrl+C and SIGTERM belong to the caller's graceful shutdown.</summary>
    private sealed class CallerLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

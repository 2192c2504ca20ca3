using System.Net;
using System.Text;
using System.Text.Json;
using Fiddler.Actors.Runtime;
using Fiddler.Host.Serving;
using Fiddler.Host.Serving.Telemetry;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Sampling;
using Microsoft.Extensions.DependencyInjection;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Serving;

/// <summary>Tests that measure latency or watch the engine stop run alone (no other test competes for the CPU).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ServingTimingCollection
{
    public const string Name = "Serving timing (not parallel)";
}

/// <summary>
/// The embedded default model (vocabulary 4096, context 512; loads in well under a second) behind a real runtime,
/// <see cref="InferenceService"/> and Kestrel on 127.0.0.1 port 0, with a real HttpClient.
/// </summary>
public sealed class ServingHarness : IAsyncDisposable
{
    public const string ModelId = "default-model";

    private ServingHarness(LoadedModel loaded, FiddlerRuntime runtime, InferenceService service, EngineStatsPoller stats, ServerHost server)
    {
        Loaded = loaded;
        Runtime = runtime;
        Service = service;
        Stats = stats;
        Server = server;
        // No draining of an abandoned response (HttpClient would read up to 1 MiB of it to reuse the connection): a
        // disposed stream closes the connection, as a client that went away does.
        Http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = server.Url, Timeout = TimeSpan.FromSeconds(120) };
    }

    public LoadedModel Loaded { get; }
    public FiddlerRuntime Runtime { get; }
    /// <summary>The undecorated engine (the frontends see it through the telemetry decorator: <see cref="Served"/>).</summary>
    public InferenceService Service { get; }
    public EngineStatsPoller Stats { get; }
    public ServerHost Server { get; }

    /// <summary>The <see cref="IInferenceService"/> the frontends resolve from the server's container.</summary>
    public IInferenceService Served => Server.App.Services.GetRequiredService<IInferenceService>();
    public HttpClient Http { get; }

    public static string ModelDir => Path.Combine(AppContext.BaseDirectory, "default-model");

    /// <param name="wrap">Wraps the engine call (fault injection, observation).</param>
    /// <param name="probe">Run the start-up probe before returning.</param>
    /// <param name="grpcPort">-1: no gRPC endpoint (as <c>--grpc-port -1</c>); 0: a picked port.</param>
    /// <param name="maxContext">As <c>--max-context</c>.</param>
    /// <param name="engineFailureLog">As serve's log of engine failures (<see cref="InferenceServiceOptions.EngineFailureLog"/>).</param>
    public static async Task<ServingHarness> StartAsync(int queueSize = 64, string? apiKey = null, Func<EngineCall, EngineCall>? wrap = null,
        bool probe = true, bool chatTemplate = true, long maxBodyBytes = ServeOptions.DefaultMaxBodyBytes, int grpcPort = -1,
        int? maxContext = null, TelemetryOptions? telemetry = null, Action<Exception>? engineFailureLog = null)
    {
        var loaded = ModelLoader.Load(ModelDir, new LoadOptions(CPU));
        var runtime = FiddlerRuntime.Start(loaded.Model, loaded.Tokenizer);
        EngineCall engine = runtime.GenerateAsync;
        var service = new InferenceService(runtime, loaded.Tokenizer, chatTemplate ? ChatTemplates.Load(ModelDir) : null,
            new InferenceServiceOptions(ModelId, queueSize) { MaxContext = maxContext, EngineFailureLog = engineFailureLog }, wrap?.Invoke(engine) ?? engine);
        // As ServeCommand: the poller outlives the server, and the server wraps the engine in the telemetry decorator.
        var stats = new EngineStatsPoller(runtime.LayerStatsAsync);
        var options = new ServeOptions
        {
            Port = 0, GrpcPort = grpcPort, ApiKey = apiKey, MaxBodyBytes = maxBodyBytes, Telemetry = telemetry ?? new TelemetryOptions(),
        };
        var server = await ServerHost.StartAsync(options, service, engineStats: () => stats.Latest);
        stats.Start();
        if (probe) await service.StartAsync();
        return new ServingHarness(loaded, runtime, service, stats, server);
    }

    /// <summary>The in-process API's greedy answer for the same prompt ids.</summary>
    public Task<GenerationResult> InProcessGreedyAsync(int[] prompt, int maxTokens, bool stopOnEos = true) =>
        Runtime.RunAsync(prompt, new GenerationOptions { MaxNewTokens = maxTokens, Sampling = SamplingOptions.Greedy, StopOnEos = stopOnEos });

    public async Task<(HttpStatusCode Status, JsonElement Body)> PostAsync(string path, string json, string? bearer = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (bearer is not null) request.Headers.Authorization = new("Bearer", bearer);
        using var response = await Http.SendAsync(request);
        return (response.StatusCode, await ReadJsonAsync(response));
    }

    public async Task<(HttpStatusCode Status, JsonElement Body)> GetAsync(string path, string? bearer = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        if (bearer is not null) request.Headers.Authorization = new("Bearer", bearer);
        using var response = await Http.SendAsync(request);
        return (response.StatusCode, await ReadJsonAsync(response));
    }

    /// <summary>Posts a streaming request and returns every <c>data:</c> payload (the last one is "[DONE]" when the stream ended properly).</summary>
    public async Task<(HttpStatusCode Status, List<string> Events)> StreamAsync(string path, string json, CancellationToken cancel = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        var events = new List<string>();
        if (response.StatusCode != HttpStatusCode.OK)
        {
            events.Add(await response.Content.ReadAsStringAsync(cancel));
            return (response.StatusCode, events);
        }
        Assert.StartsWith("text/event-stream", response.Content.Headers.ContentType?.ToString());
        await foreach (string data in Sse.ReadAsync(await response.Content.ReadAsStreamAsync(cancel), cancel)) events.Add(data);
        return (response.StatusCode, events);
    }

    public static async Task<JsonElement> ReadJsonAsync(HttpResponseMessage response)
    {
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.Content.Headers.ContentType?.MediaType == "application/json", $"{(int)response.StatusCode}: not JSON: {text}");
        using var doc = JsonDocument.Parse(text);
        return doc.RootElement.Clone();
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        await Stats.DisposeAsync();
        await Service.DisposeAsync();
        await Runtime.DisposeAsync();
        Loaded.Dispose();
    }
}

/// <summary>A strict reader of OpenAI's SSE framing: every event is one <c>data: ...</c> line followed by a blank line.</summary>
public static class Sse
{
    public static async IAsyncEnumerable<string> ReadAsync(Stream stream, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel = default)
    {
        using var reader = new StreamReader(stream, Encoding.UTF8);
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            Assert.StartsWith("data: ", line);
            Assert.Equal("", await reader.ReadLineAsync(cancel));
            yield return line["data: ".Length..];
        }
    }
}

/// <summary>Assertions on OpenAI's error schema.</summary>
public static class OpenAiAssert
{
    public static void Error(JsonElement body, string? type = null, string? param = null, string? code = null)
    {
        var error = body.GetProperty("error");
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
        Assert.True(error.TryGetProperty("param", out _) && error.TryGetProperty("code", out _) && error.TryGetProperty("type", out _));
        if (type is not null) Assert.Equal(type, error.GetProperty("type").GetString());
        if (param is not null) Assert.Equal(param, error.GetProperty("param").GetString());
        if (code is not null) Assert.Equal(code, error.GetProperty("code").GetString());
    }
}

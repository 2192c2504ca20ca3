using System.Diagnostics;
using Fiddler.Host.Serving;
using Fiddler.Host.Serving.Grpc.V1;
using Grpc.Core;
using Grpc.Health.V1;
using Xunit;
using ChatMessage = Fiddler.Host.Serving.Grpc.V1.ChatMessage;
using FinishReason = Fiddler.Host.Serving.Grpc.V1.FinishReason;

namespace Fiddler.Tests.Serving;

/// <summary>
/// fiddler.v1.Inference on a real Kestrel (HTTP/2 port) over <see cref="ScriptedInferenceService"/>, through a real
/// Grpc.Net.Client channel: streaming, options mapping, error statuses, deadlines and cancellation into the engine.
/// </summary>
public sealed class GrpcFrontendTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private static async Task<List<GenerateResponse>> ReadAll(AsyncServerStreamingCall<GenerateResponse> call)
    {
        var all = new List<GenerateResponse>();
        await foreach (var r in call.ResponseStream.ReadAllAsync()) all.Add(r);
        return all;
    }

    [Fact]
    public async Task Generate_TextPrompt_StreamsTokensThenSummary()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);

        using var call = server.Client.Generate(new GenerateRequest { Text = "hi", MaxTokens = 3, RequestId = "r-1" });
        var all = await ReadAll(call);

        int[] prompt = engine.Tokenize("hi");
        Assert.Equal(ScriptedInferenceService.Bos, prompt[0]);
        int first = prompt.Sum() % 100;
        Assert.Equal(4, all.Count);
        Assert.Equal([first, first + 1, first + 2], all.Take(3).Select(r => r.Token.Id));
        Assert.Equal($"<{first}>", all[0].Token.Text);
        Assert.Equal(-0.5f, all[0].Token.Logprob);
        var summary = all[3].Summary;
        Assert.NotNull(summary);
        Assert.Equal(FinishReason.Length, summary.FinishReason);
        Assert.Equal((uint)prompt.Length, summary.Usage.PromptTokens);
        Assert.Equal(3u, summary.Usage.CompletionTokens);
        Assert.Equal($"<{first}><{first + 1}><{first + 2}>", summary.Text);
        Assert.Equal("r-1", summary.RequestId);
        Assert.NotNull(summary.Timings.Queued);
        Assert.NotNull(summary.Timings.Decode);
        Assert.Equal(0, engine.QueueDepth);
    }

    [Fact]
    public async Task Generate_TokenIdsAndOptions_ReachTheEngineAsSent()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);
        var request = new GenerateRequest
        {
            TokenIds = new TokenIds { Ids = { 5, 6, 7 } },
            MaxTokens = 2, Temperature = 0.7f, TopP = 0.9f, TopK = 40, Seed = 1234, TopLogprobs = 3,
            Stop = { "\n\n", "END" },
        };

        await ReadAll(server.Client.Generate(request));

        var job = Assert.Single(engine.Jobs);
        Assert.Equal([5, 6, 7], job.PromptIds);
        Assert.Equal(2, job.Options.MaxNewTokens);
        Assert.Equal(new Fiddler.Kernels.Sampling.SamplingOptions(0.7f, 40, 0.9f, 1234), job.Options.Sampling);
        Assert.Equal(3, job.Options.TopLogprobs);
        Assert.Equal(["\n\n", "END"], job.Options.StopStrings);
        Assert.StartsWith("gen-", job.RequestId);
    }

    [Fact]
    public async Task Generate_NoOptions_UsesOpenAiDefaults()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);

        await ReadAll(server.Client.Generate(new GenerateRequest { TokenIds = new TokenIds { Ids = { 3 } } }));

        var job = Assert.Single(engine.Jobs);
        Assert.Equal(new Fiddler.Kernels.Sampling.SamplingOptions(1, 0, 1, null), job.Options.Sampling);
        Assert.Equal(new Fiddler.Kernels.Generation.GenerationOptions().MaxNewTokens, job.Options.MaxNewTokens);
    }

    [Fact]
    public async Task Generate_ChatMessages_RendersTemplateWithoutAddingBos()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);
        var chat = new ChatMessages { Messages = { new ChatMessage { Role = "user", Content = "yo" } } };

        await ReadAll(server.Client.Generate(new GenerateRequest { Chat = chat, MaxTokens = 1 }));

        Assert.Equal(engine.Tokenize("<user>yo", addSpecialTokens: false), Assert.Single(engine.Jobs).PromptIds);
    }

    public static TheoryData<string, GenerateRequest> InvalidRequests => new()
    {
        { "prompt", new GenerateRequest() },
        { "text", new GenerateRequest { Text = "" } },
        { "token_ids", new GenerateRequest { TokenIds = new TokenIds() } },
        { "token_ids", new GenerateRequest { TokenIds = new TokenIds { Ids = { 1, 100 } } } },
        { "token_ids", new GenerateRequest { TokenIds = new TokenIds { Ids = { -1 } } } },
        { "chat.messages", new GenerateRequest { Chat = new ChatMessages() } },
        { "chat.messages[1].role", new GenerateRequest { Chat = new ChatMessages { Messages = { new ChatMessage { Role = "user" }, new ChatMessage() } } } },
        { "max_tokens", new GenerateRequest { Text = "a", MaxTokens = 0 } },
        { "temperature", new GenerateRequest { Text = "a", Temperature = -0.1f } },
        { "temperature", new GenerateRequest { Text = "a", Temperature = float.NaN } },
        { "top_p", new GenerateRequest { Text = "a", TopP = 0 } },
        { "top_p", new GenerateRequest { Text = "a", TopP = 1.5f } },
        { "stop[1]", new GenerateRequest { Text = "a", Stop = { "x", "" } } },
        { "top_logprobs", new GenerateRequest { Text = "a", TopLogprobs = 21 } },
        { "messages", new GenerateRequest { Chat = new ChatMessages { Messages = { new ChatMessage { Role = "tool", Content = "x" } } } } },
    };

    [Theory]
    [MemberData(nameof(InvalidRequests))]
    public async Task Generate_InvalidField_InvalidArgumentNamingTheField(string field, GenerateRequest request)
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);

        var e = await Assert.ThrowsAsync<RpcException>(() => ReadAll(server.Client.Generate(request)));

        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith(field + ": ", e.Status.Detail);
        Assert.Empty(engine.Jobs);
        Assert.Equal(0, engine.QueueDepth);
    }

    [Fact]
    public async Task Generate_PromptPlusMaxTokensOverContext_OutOfRange()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);

        var e = await Assert.ThrowsAsync<RpcException>(() => ReadAll(server.Client.Generate(new GenerateRequest { Text = "abc", MaxTokens = 253 })));

        Assert.Equal(StatusCode.OutOfRange, e.StatusCode);
        Assert.StartsWith("max_tokens: ", e.Status.Detail);
        Assert.Equal(0, engine.QueueDepth); // the ticket went back
    }

    [Fact]
    public async Task Generate_QueueFull_ResourceExhaustedAtOnce()
    {
        var engine = new ScriptedInferenceService { Capacity = 1, TokenDelay = TimeSpan.FromMilliseconds(50) };
        await using var server = await GrpcTestServer.StartAsync(engine);
        using var cts = new CancellationTokenSource();
        using var busy = server.Client.Generate(new GenerateRequest { Text = "a", MaxTokens = 50 }, cancellationToken: cts.Token);
        Assert.True(await busy.ResponseStream.MoveNext(cts.Token));

        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RpcException>(() => ReadAll(server.Client.Generate(new GenerateRequest { Text = "b", MaxTokens = 1 })));

        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("queue is full", e.Status.Detail);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1), $"took {watch.Elapsed}");
        cts.Cancel();
    }

    [Fact]
    public async Task Generate_ServiceStopping_Unavailable()
    {
        var engine = new ScriptedInferenceService { Stopping = true };
        await using var server = await GrpcTestServer.StartAsync(engine);

        var e = await Assert.ThrowsAsync<RpcException>(() => ReadAll(server.Client.Generate(new GenerateRequest { Text = "a" })));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
    }

    [Fact]
    public async Task Generate_ServerCancelsMidGeneration_UnavailableNotASummary()
    {
        // What a shutdown's grace period running out looks like from here: the engine ends the job as cancelled
        // although the client never asked.
        var engine = new ScriptedInferenceService { AlterCompletion = c => c with { Finish = Fiddler.Kernels.Generation.FinishReason.Cancelled } };
        await using var server = await GrpcTestServer.StartAsync(engine);
        var received = new List<GenerateResponse>();

        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = server.Client.Generate(new GenerateRequest { Text = "a", MaxTokens = 3 });
            await foreach (var r in call.ResponseStream.ReadAllAsync()) received.Add(r);
        });

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("shutting down", e.Status.Detail);
        Assert.All(received, r => Assert.Null(r.Summary)); // the tokens that came, then the status: no "cancelled" summary
    }

    [Fact]
    public async Task Generate_DeadlinePassesMidGeneration_DeadlineExceededAndEngineJobCancelled()
    {
        var engine = new ScriptedInferenceService { TokenDelay = TimeSpan.FromMilliseconds(100) };
        await using var server = await GrpcTestServer.StartAsync(engine);

        using var call = server.Client.Generate(new GenerateRequest { Text = "a", MaxTokens = 50, RequestId = "slow" },
            deadline: DateTime.UtcNow.AddMilliseconds(400));
        var e = await Assert.ThrowsAsync<RpcException>(() => ReadAll(call));

        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        Assert.Equal("slow", await engine.FirstCancellation.Task.WaitAsync(Patience));
        await WaitFor(() => engine.QueueDepth == 0);
    }

    [Fact]
    public async Task Generate_ClientCancels_CancellationReachesEngine()
    {
        var engine = new ScriptedInferenceService { TokenDelay = TimeSpan.FromMilliseconds(50) };
        await using var server = await GrpcTestServer.StartAsync(engine);
        using var cts = new CancellationTokenSource();

        using var call = server.Client.Generate(new GenerateRequest { Text = "a", MaxTokens = 50, RequestId = "gone" }, cancellationToken: cts.Token);
        Assert.True(await call.ResponseStream.MoveNext(cts.Token));
        Assert.True(await call.ResponseStream.MoveNext(cts.Token));
        cts.Cancel();

        Assert.Equal("gone", await engine.FirstCancellation.Task.WaitAsync(Patience));
        await WaitFor(() => engine.QueueDepth == 0);
        Assert.Equal(StatusCode.Cancelled, (await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None))).StatusCode);
    }

    [Fact]
    public async Task ModelInfo_ReturnsTheServedModel()
    {
        var engine = new ScriptedInferenceService();
        await using var server = await GrpcTestServer.StartAsync(engine);

        var info = await server.Client.ModelInfoAsync(new ModelInfoRequest());

        Assert.Equal("scripted-moe", info.Id);
        Assert.Equal(256u, info.ContextLength);
        Assert.Equal(100u, info.VocabSize);
        Assert.Equal("chatml", info.ChatTemplate);
        Assert.Equal(engine.Model.Created, info.Created.ToDateTimeOffset());
    }

    [Fact]
    public async Task Health_ReflectsTheEngine()
    {
        var engine = new ScriptedInferenceService { Health = new HealthReport(false, "loading", "warming up") };
        await using var server = await GrpcTestServer.StartAsync(engine);

        var loading = await server.Client.HealthAsync(new HealthRequest());
        engine.Health = new HealthReport(true, "ready", null);
        var ready = await server.Client.HealthAsync(new HealthRequest());

        Assert.False(loading.Ready);
        Assert.Equal("loading", loading.Status);
        Assert.Equal("warming up", loading.Detail);
        Assert.True(ready.Ready);
        Assert.Equal(0u, ready.QueueDepth);
    }

    [Theory]
    [InlineData("")]
    [InlineData("fiddler.v1.Inference")]
    public async Task StandardHealthCheck_ReflectsTheEngine(string service)
    {
        var engine = new ScriptedInferenceService { Health = new HealthReport(false, "loading", null) };
        await using var server = await GrpcTestServer.StartAsync(engine);
        var health = new Health.HealthClient(server.Channel);

        var loading = await health.CheckAsync(new HealthCheckRequest { Service = service });
        engine.Health = new HealthReport(true, "ready", null);
        var ready = await health.CheckAsync(new HealthCheckRequest { Service = service });

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, loading.Status);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, ready.Status);
    }

    private static async Task WaitFor(Func<bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(watch.Elapsed < Patience, "condition not met in time");
            await Task.Delay(10);
        }
    }
}

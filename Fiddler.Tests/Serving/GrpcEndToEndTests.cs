using System.Diagnostics;
using System.Net;
using Fiddler.Host.Serving.Grpc.V1;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Xunit;
using FinishReason = Fiddler.Kernels.Generation.FinishReason;

namespace Fiddler.Tests.Serving;

/// <summary>
/// The gRPC frontend on the real <c>fiddler serve</c> stack (ServerHost with its h2c port, the telemetry decorator,
/// InferenceService, the actor runtime and the embedded default model on CPU). Alone on the machine: the deadline
/// and queue tests time the engine.
/// </summary>
[Collection(ServingTimingCollection.Name)]
public sealed class GrpcEndToEndTests
{
    private const string Prompt = "Once upon a time";

    // Temperature 2 with seed 1 keeps this model off EOS for 500 tokens ("Once upon a time", checked with
    // `fiddler generate --temperature 2 --top-k 0 --top-p 1 --seed 1`): a generation the deadline cuts short.
    private static GenerateRequest Long(uint maxTokens, string id) =>
        new() { Text = Prompt, MaxTokens = maxTokens, Temperature = 2, Seed = 1, RequestId = id };

    private static (GrpcChannel Channel, Inference.InferenceClient Client) Connect(ServingHarness h)
    {
        var channel = GrpcChannel.ForAddress(h.Server.GrpcUrl!);
        return (channel, new Inference.InferenceClient(channel));
    }

    [Fact]
    public async Task Generate_Greedy_SameTokensAndTextAsInProcessApi()
    {
        await using var h = await ServingHarness.StartAsync(grpcPort: 0);
        var (channel, client) = Connect(h);
        using var _ = channel;
        const string text = "The meaning of life is";

        using var call = client.Generate(new GenerateRequest { Text = text, MaxTokens = 24, Temperature = 0, RequestId = "parity" });
        var ids = new List<int>();
        GenerateSummary? summary = null;
        await foreach (var r in call.ResponseStream.ReadAllAsync())
        {
            if (r.Token is { } t) ids.Add(t.Id);
            else summary = r.Summary;
        }
        var expected = await h.InProcessGreedyAsync(h.Service.Tokenize(text), 24);

        Assert.Equal(expected.Tokens, ids);
        Assert.NotNull(summary);
        Assert.Equal(expected.Text, summary.Text);
        Assert.Equal("parity", summary.RequestId);
        Assert.Equal((uint)expected.Tokens.Length, summary.Usage.CompletionTokens);
        Assert.Equal((uint)expected.PromptIds.Length, summary.Usage.PromptTokens);
        Assert.Equal(expected.Finish == FinishReason.Eos ? Fiddler.Host.Serving.Grpc.V1.FinishReason.Eos : Fiddler.Host.Serving.Grpc.V1.FinishReason.Length,
            summary.FinishReason);
    }

    [Fact]
    public async Task ModelInfoAndHealth_RealServer_DescribeTheServedModelAndReady()
    {
        await using var h = await ServingHarness.StartAsync(grpcPort: 0, maxContext: 256);
        var (channel, client) = Connect(h);
        using var _ = channel;

        var info = await client.ModelInfoAsync(new ModelInfoRequest());
        Assert.Equal(ServingHarness.ModelId, info.Id);
        Assert.Equal(256u, info.ContextLength); // --max-context caps the model's 512
        Assert.Equal((uint)h.Service.Model.VocabSize, info.VocabSize);
        Assert.Equal(h.Service.Model.ChatTemplate ?? "", info.ChatTemplate);

        var health = await client.HealthAsync(new HealthRequest());
        Assert.True(health.Ready);
        Assert.Equal("ok", health.Status);
        Assert.Equal(0u, health.QueueDepth);

        var standard = new Health.HealthClient(channel);
        foreach (string service in new[] { "", Inference.Descriptor.FullName })
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, (await standard.CheckAsync(new HealthCheckRequest { Service = service })).Status);

        // The gRPC services answer on the h2c port only; the OpenAI port gives its JSON 404.
        var (status, body) = await h.PostAsync("/fiddler.v1.Inference/ModelInfo", "{}");
        Assert.Equal(HttpStatusCode.NotFound, status);
        OpenAiAssert.Error(body);
    }

    [Fact]
    public async Task ApiKey_GrpcCalls_UnauthenticatedWithoutItHealthOpen()
    {
        await using var h = await ServingHarness.StartAsync(grpcPort: 0, apiKey: "sk-grpc");
        var (channel, client) = Connect(h);
        using var _ = channel;

        foreach (var headers in new[] { new Metadata(), new Metadata { { "authorization", "Bearer wrong" } } })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await client.ModelInfoAsync(new ModelInfoRequest(), headers));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
            using var call = client.Generate(new GenerateRequest { Text = "a", MaxTokens = 1 }, headers);
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None))).StatusCode);
        }
        var key = new Metadata { { "authorization", "Bearer sk-grpc" } };
        Assert.Equal(ServingHarness.ModelId, (await client.ModelInfoAsync(new ModelInfoRequest(), key)).Id);
        using (var call = client.Generate(new GenerateRequest { Text = "a", MaxTokens = 2, Temperature = 0 }, key))
            await foreach (var __ in call.ResponseStream.ReadAllAsync()) { }
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
            (await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status);
        Assert.Equal(0, h.Service.QueueDepth);
    }

    [Fact]
    public async Task Generate_QueueFull_ResourceExhaustedAtOnce()
    {
        await using var h = await ServingHarness.StartAsync(queueSize: 1, grpcPort: 0);
        var (channel, client) = Connect(h);
        using var _ = channel;
        using var stop = new CancellationTokenSource();

        using var busy = client.Generate(Long(500, "busy"), cancellationToken: stop.Token);
        Assert.True(await busy.ResponseStream.MoveNext(stop.Token)); // running: the only place is taken
        Assert.Equal(1, h.Service.QueueDepth);

        var full = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var refused = client.Generate(new GenerateRequest { Text = "a", MaxTokens = 1 });
            await refused.ResponseStream.MoveNext(CancellationToken.None);
        });
        Assert.Equal(StatusCode.ResourceExhausted, full.StatusCode);
        Assert.Contains("queue is full", full.Status.Detail);
        // The OpenAI frontend shares the queue.
        var (status, _) = await h.PostAsync("/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":1}""");
        Assert.Equal(HttpStatusCode.TooManyRequests, status);

        stop.Cancel();
        await WaitUntilAsync(() => h.Service.QueueDepth == 0, "the cancelled call gives its place back");
        using var next = client.Generate(new GenerateRequest { Text = "a", MaxTokens = 2, Temperature = 0 });
        await foreach (var __ in next.ResponseStream.ReadAllAsync()) { }
    }

    [Fact]
    public async Task Generate_EngineFailsAfterAToken_InternalWithTheMessageAndTheNextCallWorks()
    {
        int failNext = 1;
        await using var h = await ServingHarness.StartAsync(grpcPort: 0, wrap: engine => (p, o, c) =>
            o.MaxNewTokens > 1 && Interlocked.Exchange(ref failNext, 0) == 1 ? ServingLifecycleTests.FailAfterFirstToken(engine(p, o, c)) : engine(p, o, c));
        var (channel, client) = Connect(h);
        using var _ = channel;
        int received = 0;
        using (var call = client.Generate(Long(8, "fails")))
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                await foreach (var r in call.ResponseStream.ReadAllAsync())
                    if (r.Token is not null) received++;
            });
            Assert.Equal(StatusCode.Internal, e.StatusCode); // the engine's failure, not INVALID_ARGUMENT or UNKNOWN
            Assert.Contains("engine failure (ArgumentException): Logits contain NaN.", e.Status.Detail);
        }
        Assert.Equal(1, received);
        using var next = client.Generate(Long(2, "after"));
        int tokens = 0;
        await foreach (var r in next.ResponseStream.ReadAllAsync()) if (r.Token is not null) tokens++;
        Assert.Equal(2, tokens);
    }

    [Fact]
    public async Task Generate_DeadlinePassesMidGeneration_DeadlineExceededAndEngineStops()
    {
        int produced = 0;
        await using var h = await ServingHarness.StartAsync(grpcPort: 0,
            wrap: engine => (p, o, c) => ServingLifecycleTests.Pump(engine(p, o, c), () => Interlocked.Increment(ref produced)));
        var (channel, client) = Connect(h);
        using var _ = channel;

        // This machine's decode step now (it may be shared): the deadline scales with it. The first call pays the connection.
        TimeSpan step = TimeSpan.Zero;
        for (int i = 0; i < 2; i++)
        {
            var clock = Stopwatch.StartNew();
            using var warm = client.Generate(Long(16, $"warm-{i}"));
            await foreach (var __ in warm.ResponseStream.ReadAllAsync()) { }
            step = clock.Elapsed / 16;
        }

        int before = Volatile.Read(ref produced);
        int received = 0;
        var deadline = DateTime.UtcNow + Max(TimeSpan.FromMilliseconds(300), 40 * step);
        using var call = client.Generate(Long(500, "deadline"), deadline: deadline);
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await foreach (var r in call.ResponseStream.ReadAllAsync())
                if (r.Token is not null) received++;
        });

        // gRPC's deadline status is best effort over HTTP/2: the server's own deadline timer ends the stream with a
        // reset, and where that reset reaches a busy client before the client's timer fires, the client reports the
        // broken read (UNAVAILABLE, "Error reading next message") instead. Any other status is the server's answer.
        bool serverResetFirst = e.StatusCode == StatusCode.Unavailable && DateTime.UtcNow >= deadline
            && e.Status.Detail.StartsWith("Error reading next message", StringComparison.Ordinal);
        Assert.True(e.StatusCode == StatusCode.DeadlineExceeded || serverResetFirst, $"{e.StatusCode}: {e.Status.Detail}");
        await WaitUntilAsync(() => h.Service.QueueDepth == 0, "the place is given back");
        int atStop = Volatile.Read(ref produced) - before;
        await Task.Delay(Max(TimeSpan.FromMilliseconds(300), 6 * step)); // 6+ more tokens if the engine had gone on
        Assert.InRange(Volatile.Read(ref produced) - before - atStop, 0, 1); // at most the step that was running
        Assert.True(received >= 1, $"no token arrived before the deadline (step {step.TotalMilliseconds:F1} ms)");
        Assert.InRange(atStop, received, 499); // cut short, far from the 500 asked for
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(30)) Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(5);
        }
    }
}

using System.Diagnostics;
using System.Net;
using Fiddler.Host.Serving;
using Fiddler.Host.Serving.Grpc.V1;
using Fiddler.Host.Serving.Telemetry;
using Fiddler.Kernels.Generation;
using Grpc.Core;
using Grpc.Net.Client;
using OpenTelemetry.Trace;
using Xunit;
using Xunit.Abstractions;
using Tags = Fiddler.Host.Serving.Telemetry.ServingTelemetry.Tags;

namespace Fiddler.Tests.Serving;

/// <summary>
/// The tools of docs/serving-tools.md and the telemetry of docs/grpc-and-telemetry.md against the real
/// <c>fiddler serve</c> stack (ServerHost, telemetry decorator, InferenceService, actor runtime, default model on CPU).
/// </summary>
public sealed class ServeEndToEndTests(ITestOutputHelper output)
{
    [Fact]
    public async Task MalformedCorpus_RealServer_NoServerErrorAndStillServes()
    {
        // A small context cap, as `--max-context 64`: cases that generate (chat without max_tokens takes the rest of the
        // context) stay short, and those asking for more get 400 before any work.
        await using var h = await ServingHarness.StartAsync(maxContext: 64);
        var cases = MalformedRequests.All(seed: 1, model: ServingHarness.ModelId).ToList();
        var clock = Stopwatch.StartNew();

        var report = await MalformedRequests.RunAsync(h.Http, cases, ServingHarness.ModelId);

        output.WriteLine($"{clock.Elapsed.TotalSeconds:F0} s; slowest: " + string.Join(", ",
            report.Outcomes.OrderByDescending(o => o.Milliseconds).Take(5).Select(o => $"{o.Name} {o.Milliseconds:F0} ms")));
        output.WriteLine(report.Summary());
        Assert.True(cases.Count >= 1000, $"{cases.Count} cases");
        Assert.Equal(cases.Count, report.Outcomes.Count);
        Assert.True(report.Passed, report.Summary());
        Assert.True(report.StatusCounts.Keys.Max() < 500, report.Summary());
        Assert.Equal(0, h.Service.QueueDepth);
        Assert.True(h.Service.Health.Ready);
    }

    [NodeFact]
    public async Task OpenAiNodeClient_RealServer_EveryCheckPasses()
    {
        await using var h = await ServingHarness.StartAsync();

        var r = await OpenAiNodeClient.RunAsync(h.Server.Url);

        Assert.True(r.Ok, r.ToString());
        Assert.Equal(ServingHarness.ModelId, (string)r.Json!["model"]!);
        Assert.Equal(404, (int)r.Json["error_unknown_model"]!["status"]!);
        Assert.Equal(400, (int)r.Json["error_bad_request"]!["status"]!);
    }

    [NodeFact]
    public async Task OpenAiNodeClient_RealServerWithApiKey_PassesWithItAndSees401Without()
    {
        await using var h = await ServingHarness.StartAsync(apiKey: "sk-e2e");

        var r = await OpenAiNodeClient.RunAsync(new Uri(h.Server.Url, "v1"), apiKey: "sk-e2e");

        Assert.True(r.Ok, r.ToString());
        Assert.Equal(401, (int)r.Json!["error_wrong_api_key"]!["status"]!);
    }

    [Fact]
    public async Task Metrics_AfterOpenAiAndGrpcRequests_FiddlerSeriesAndTracesOnRealServer()
    {
        var spans = new GrpcTelemetryTests.LockedCollection<Activity>();
        await using var h = await ServingHarness.StartAsync(grpcPort: 0,
            telemetry: new TelemetryOptions { ConfigureTracing = t => t.AddInMemoryExporter(spans) });

        var (status, body) = await h.PostAsync("/v1/chat/completions",
            """{"model":"default-model","messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        string openAiId = body.GetProperty("id").GetString()!;
        using (var channel = GrpcChannel.ForAddress(h.Server.GrpcUrl!))
        {
            using var call = new Inference.InferenceClient(channel).Generate(new GenerateRequest { Text = "Hi", MaxTokens = 4, Temperature = 0, RequestId = "e2e-grpc" });
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        }
        await h.Stats.PollAsync(); // the background loop polls every 2 s; take a snapshot now

        string text = await h.Http.GetStringAsync("/metrics");
        output.WriteLine(text);

        foreach (string series in new[]
        {
            "fiddler_requests_total{", "fiddler_tokens_generated_total{", "fiddler_time_to_first_token_seconds_bucket{",
            "fiddler_request_duration_seconds_bucket{", "fiddler_queue_depth", "fiddler_engine_expert_gpu_hit_rate",
            "fiddler_engine_layer_steps_total", "fiddler_engine_expert_routed_total", "fiddler_engine_pcie_transferred_bytes_total",
        })
            Assert.Contains(series, text);
        Assert.Contains("fiddler_frontend=\"openai\"", text);
        Assert.Contains("fiddler_frontend=\"grpc\"", text);
        Assert.Contains("fiddler_outcome=\"ok\"", text);

        // One fiddler.request span per job, tagged with its frontend, under the server span, with its three phases.
        foreach (var (id, frontend) in new[] { (openAiId, "openai"), ("e2e-grpc", "grpc") })
        {
            var request = await GrpcTelemetryTests.Eventually(() => spans.Snapshot().SingleOrDefault(a =>
                a.OperationName == "fiddler.request" && (string?)a.GetTagItem(Tags.RequestId) == id));
            Assert.Equal(frontend, request.GetTagItem(Tags.Frontend));
            Assert.Equal(ServingHarness.ModelId, request.GetTagItem(Tags.Model));
            Assert.Equal(ServingTelemetry.Outcomes.Ok, request.GetTagItem(Tags.Outcome));
            var server = await GrpcTelemetryTests.Eventually(() => spans.Snapshot().SingleOrDefault(a => a.SpanId == request.ParentSpanId));
            Assert.Equal(ActivityKind.Server, server.Kind);
            var phases = spans.Snapshot().Where(a => a.ParentSpanId == request.SpanId).Select(a => a.OperationName).Order();
            Assert.Equal(["fiddler.decode", "fiddler.prefill", "fiddler.queue"], phases);
        }
    }

    [Fact]
    public async Task QueueTicket_DisposedByRunAndAgainByFrontend_GivesBackOnePlace()
    {
        await using var h = await ServingHarness.StartAsync(queueSize: 2);
        var served = h.Served;
        var job = new CompletionJob(h.Service.Tokenize("Hi"), new GenerationOptions { MaxNewTokens = 2 }, "twice");

        // As the gRPC frontend: `using var _ = ticket` around RunAsync, which disposes the ticket itself.
        var first = served.Admit();
        using (first)
            await foreach (var _ in served.RunAsync(first, job, CancellationToken.None)) { }
        Assert.Equal(0, served.QueueDepth);

        using var second = served.Admit();
        using var third = served.Admit();
        first.Dispose(); // late, third time: must not give back the place `second` holds
        Assert.Equal(2, served.QueueDepth);
        Assert.Throws<QueueFullException>(() => served.Admit());
        second.Dispose();
        second.Dispose();
        Assert.Equal(1, served.QueueDepth);
    }
}

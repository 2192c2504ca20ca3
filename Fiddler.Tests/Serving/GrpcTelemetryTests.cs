using System.Diagnostics;
using Fiddler.Host.Serving.Grpc.V1;
using Fiddler.Host.Serving.Telemetry;
using Grpc.Core;
using OpenTelemetry.Trace;
using Xunit;
using Xunit.Abstractions;

namespace Fiddler.Tests.Serving;

/// <summary>
/// The whole telemetry wiring on a real Kestrel: AddFiddlerTelemetry + AddInstrumentedInference + MapFiddlerMetrics,
/// a gRPC request, then the in-memory span export and the Prometheus text on /metrics.
/// </summary>
public sealed class GrpcTelemetryTests(ITestOutputHelper output)
{
    private static readonly EngineStatsSnapshot Stats =
        new(10, 80, 60, 20, 5, 5 * 1024, TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(3));

    [Fact]
    public async Task GrpcGenerate_WithTelemetry_SpansExportedAndMetricsScraped()
    {
        var spans = new LockedCollection<Activity>();
        var engine = new ScriptedInferenceService { TokenDelay = TimeSpan.FromMilliseconds(5) };
        var options = new TelemetryOptions { ConfigureTracing = t => t.AddInMemoryExporter(spans) };
        await using var server = await GrpcTestServer.StartAsync(null,
            services => services.AddFiddlerTelemetry(options).AddInstrumentedInference(engine, () => Stats),
            app => app.MapFiddlerMetrics());

        using var call = server.Client.Generate(new GenerateRequest { Text = "hi", MaxTokens = 4, RequestId = "traced" });
        await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }

        // The frontend's own server span ends after the client has its trailers; the exporter is synchronous.
        Activity request = await Eventually(() => Snapshot(spans).SingleOrDefault(a =>
            a.OperationName == "fiddler.request" && (string?)a.GetTagItem(ServingTelemetry.Tags.RequestId) == "traced"));
        Activity server_ = await Eventually(() => Snapshot(spans).SingleOrDefault(a => a.SpanId == request.ParentSpanId));
        Assert.Equal(ActivityKind.Server, server_.Kind);
        Assert.Equal("grpc", request.GetTagItem(ServingTelemetry.Tags.Frontend));
        Assert.Equal(4, request.GetTagItem(ServingTelemetry.Tags.CompletionTokens));
        var children = Snapshot(spans).Where(a => a.ParentSpanId == request.SpanId).Select(a => a.OperationName).Order();
        Assert.Equal(["fiddler.decode", "fiddler.prefill", "fiddler.queue"], children);

        using var http = new HttpClient { BaseAddress = server.HttpAddress };
        string text = await http.GetStringAsync("/metrics");
        output.WriteLine(text);

        Assert.Contains("fiddler_requests_total{", text);
        Assert.Contains("fiddler_frontend=\"grpc\"", text);
        Assert.Contains("fiddler_outcome=\"ok\"", text);
        Assert.Contains("fiddler_tokens_generated_total", text);
        Assert.Contains("fiddler_time_to_first_token_seconds_bucket", text);
        Assert.Contains("fiddler_request_duration_seconds_bucket", text);
        Assert.Contains("fiddler_decode_rate_per_second_bucket", text);
        Assert.Contains("fiddler_queue_depth", text);
        Assert.Contains("fiddler_engine_expert_gpu_hit_rate", text);
        Assert.Contains("fiddler_engine_pcie_transferred_bytes_total", text);
    }

    private static Activity[] Snapshot(LockedCollection<Activity> spans) => spans.Snapshot();

    /// <summary>The in-memory exporter adds from the request's thread while the test reads.</summary>
    internal sealed class LockedCollection<T> : System.Collections.ObjectModel.Collection<T>
    {
        protected override void InsertItem(int index, T item)
        {
            lock (this) base.InsertItem(index, item);
        }

        public T[] Snapshot()
        {
            lock (this) return [.. this];
        }
    }

    internal static async Task<T> Eventually<T>(Func<T?> probe) where T : class
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            if (probe() is { } found) return found;
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), "not exported in time");
            await Task.Delay(20);
        }
    }
}

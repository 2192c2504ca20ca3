using System.Text.Json.Nodes;
using Fiddler.Host.Serving.Load;
using Fiddler.Tests.Serving;
using Xunit;

namespace Fiddler.Tests.Host.Serving.Load;

/// <summary>The load generator against the fake OpenAI-compatible server (healthy, rejecting, broken).</summary>
public sealed class LoadGeneratorTests
{
    private static async Task<LoadReport> RunAsync(FakeOpenAiServer server, LoadOptions options)
    {
        using var generator = new LoadGenerator(options with { BaseUrl = server.BaseUrl });
        return await generator.RunAsync();
    }

    private static LoadOptions Options(int requests = 20) => new() { BaseUrl = new Uri("http://unused"), Concurrency = 4, Requests = requests, MaxTokens = 4 };

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task RunAsync_HealthyServer_AllOkWithTokensAndLatency(bool chat, bool stream)
    {
        await using var server = await FakeOpenAiServer.StartAsync();
        var report = await RunAsync(server, Options() with { Chat = chat, Stream = stream });
        Assert.Equal((20, 20, 0, 0), (report.Requests, report.Ok, report.Rejected, report.Failed));
        Assert.Equal("fake-model", report.Model);
        Assert.Equal(20 * 4, report.CompletionTokens); // max_tokens 4 < the fake's 6 words: 4 each, by usage or by chunks
        Assert.Equal(20, report.LatencyMs.Count);
        Assert.True(report.LatencyMs.P50 <= report.LatencyMs.P90 && report.LatencyMs.P90 <= report.LatencyMs.P99 && report.LatencyMs.P99 <= report.LatencyMs.Max);
        Assert.Equal(stream ? 20 : 0, report.TimeToFirstTokenMs.Count);
        Assert.True(report.RequestsPerSecond > 0 && report.CompletionTokensPerSecond > 0);
        Assert.Equal(20, server.Generations);
    }

    [Fact]
    public async Task RunAsync_EveryFourthRejected_CountsRejectionsApartFromFailures()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { RejectEvery = 4 });
        var report = await RunAsync(server, Options(40) with { Stream = true });
        Assert.Equal((40, 30, 10, 0), (report.Requests, report.Ok, report.Rejected, report.Failed));
        Assert.Equal(10, report.RejectionLatencyMs.Count);
        Assert.NotNull(report.RejectionLatencyMs.P99);
        Assert.Equal(30, report.LatencyMs.Count);
        Assert.Equal(30 * 4, report.CompletionTokens);
    }

    [Fact]
    public async Task RunAsync_StreamWithoutDone_FailedAsUnterminated()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { OmitDone = true });
        var report = await RunAsync(server, Options(8) with { Stream = true });
        Assert.Equal(8, report.Failed);
        Assert.Equal(8, report.FailedBy["stream-unterminated"]);
    }

    [Fact]
    public async Task RunAsync_UnknownModel_FailedBy404()
    {
        await using var server = await FakeOpenAiServer.StartAsync();
        var report = await RunAsync(server, Options(5) with { Model = "other-model" });
        Assert.Equal(5, report.FailedBy["404"]);
        Assert.Equal(0, report.Ok);
    }

    [Fact]
    public async Task RunAsync_ApiKey_SentAsBearer()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { ApiKey = "sekret" });
        var withKey = await RunAsync(server, Options(4) with { ApiKey = "sekret" });
        Assert.Equal(4, withKey.Ok);
        var without = await RunAsync(server, Options(4) with { Model = "fake-model" });
        Assert.Equal(4, without.FailedBy["401"]);
    }

    [Fact]
    public async Task RunAsync_NothingListening_ConnectionFailures()
    {
        var report = await new LoadGenerator(Options(3) with { BaseUrl = new Uri("http://127.0.0.1:9/"), Model = "m" }).RunAsync();
        Assert.Equal(3, report.FailedBy["connection"]);
    }

    [Fact]
    public async Task RunAsync_Duration_StopsSendingAfterIt()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { TokenDelay = TimeSpan.FromMilliseconds(5) });
        var report = await RunAsync(server, Options() with { Duration = TimeSpan.FromMilliseconds(400), Stream = true, Concurrency = 2 });
        Assert.True(report.Ok >= 1, "no request answered in 400 ms");
        Assert.Equal(0, report.Failed);
        Assert.InRange(report.ElapsedSeconds, 0.4, 30); // stops sending at 400 ms; waits only for requests in flight
    }

    [Fact]
    public async Task RunAsync_Cancelled_ReportsWhatFinished()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { TokenDelay = TimeSpan.FromMilliseconds(20) });
        using var generator = new LoadGenerator(Options(10_000) with { BaseUrl = server.BaseUrl, Stream = true });
        using var stop = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
        var report = await generator.RunAsync(stop.Token);
        Assert.InRange(report.Requests, 0, 9_999);
        Assert.Equal(0, report.Failed); // requests cut off by the cancellation are not counted as failures
    }

    [Fact]
    public async Task RunAsync_CancelledBeforeTheModelIsKnown_ReportsNothingInsteadOfThrowing()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions());
        using var generator = new LoadGenerator(Options(10) with { BaseUrl = server.BaseUrl, Model = null });
        using var stop = new CancellationTokenSource();
        stop.Cancel();
        var report = await generator.RunAsync(stop.Token);
        Assert.Equal(0, report.Requests);
        Assert.Equal(0, report.Failed);
        Assert.NotNull(JsonNode.Parse(report.ToJson())); // still a well-formed report
    }

    [Fact]
    public async Task ToJson_Report_OneObjectWithSnakeCaseKeys()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { RejectEvery = 2 });
        var report = await RunAsync(server, Options(6));
        var json = JsonNode.Parse(report.ToJson())!.AsObject();
        Assert.Equal(3, (int)json["ok"]!);
        Assert.Equal(3, (int)json["rejected"]!);
        Assert.NotNull(json["latency_ms"]!["p99"]);
        Assert.NotNull(json["rejection_latency_ms"]!["p50"]);
        Assert.Null(json["time_to_first_token_ms"]!["p50"]); // not streamed
        Assert.NotNull(json["completion_tokens_per_second"]);
        Assert.Contains("rejected (429)", report.ToTable());
    }
}

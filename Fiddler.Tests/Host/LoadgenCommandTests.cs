using System.Text.Json.Nodes;
using Fiddler.Host.Cli;
using Fiddler.Tests.Serving;
using Fiddler.Tests.Support;
using Xunit;

namespace Fiddler.Tests.Host;

/// <summary><c>fiddler loadgen</c> end to end against the fake server, and its user errors (exit code 2, one line).</summary>
[Collection(ConsoleCollection.Name)]
public sealed class LoadgenCommandTests
{
    private static void AssertUserError(CliResult r, string expected) => CliAssert.UserError(r, StringComparison.Ordinal, expected);

    [Fact]
    public async Task Loadgen_JsonAgainstRejectingServer_OneJsonObjectExit0()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { RejectEvery = 3 });
        var r = CliHarness.Run("loadgen", "--url", server.BaseUrl.AbsoluteUri, "--requests", "12", "--concurrency", "3",
            "--max-tokens", "5", "--stream", "--chat", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var json = JsonNode.Parse(r.Out)!.AsObject();
        Assert.Equal((12, 8, 4, 0), ((int)json["requests"]!, (int)json["ok"]!, (int)json["rejected"]!, (int)json["failed"]!));
        Assert.Equal("/v1/chat/completions", (string)json["endpoint"]!);
        Assert.Equal(8, (int)json["time_to_first_token_ms"]!["count"]!);
    }

    [Fact]
    public async Task Loadgen_Table_PrintsOutcomesAndPercentiles()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { ApiKey = "k" });
        var r = CliHarness.Run("loadgen", "--url", server.BaseUrl.AbsoluteUri.TrimEnd('/') + "/v1", "--requests", "4", "--api-key", "k");
        Assert.True(r.ExitCode == 0, r.Err);
        foreach (string label in new[] { "ok", "rejected (429)", "failed", "throughput", "latency", "p99" }) Assert.Contains(label, r.Out);
    }

    [Fact]
    public async Task Loadgen_PromptsFile_SendsThem()
    {
        string dir = TinyCheckpoint.TempDir();
        try
        {
            string file = Path.Combine(dir, "p.jsonl");
            File.WriteAllText(file, "{\"text\": \"a\"}\nb\n");
            await using var server = await FakeOpenAiServer.StartAsync();
            var r = CliHarness.Run("loadgen", "--url", server.BaseUrl.AbsoluteUri, "--requests", "3", "--prompts", file, "--json");
            Assert.True(r.ExitCode == 0, r.Err);
            Assert.Equal(3, server.Generations);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public async Task Loadgen_RequestsFail_ExitCode3()
    {
        await using var server = await FakeOpenAiServer.StartAsync();
        var r = CliHarness.Run("loadgen", "--url", server.BaseUrl.AbsoluteUri, "--requests", "2", "--model", "nope");
        Assert.Equal(LoadgenCommand.RequestsFailedExitCode, r.ExitCode);
        Assert.Contains("404: 2", r.Out);
    }

    [Fact]
    public void Loadgen_NoUrl_ExitCode2() => AssertUserError(CliHarness.Run("loadgen"), "--url");

    [Fact]
    public void Loadgen_RelativeUrl_ExitCode2() => AssertUserError(CliHarness.Run("loadgen", "--url", "localhost"), "--url");

    [Fact]
    public void Loadgen_FtpUrl_ExitCode2() => AssertUserError(CliHarness.Run("loadgen", "--url", "ftp://x/"), "--url");

    [Fact]
    public void Loadgen_RequestsAndDuration_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--requests", "3", "--duration", "1s"), "not both");

    [Fact]
    public void Loadgen_ZeroConcurrency_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--concurrency", "0"), "--concurrency");

    [Fact]
    public void Loadgen_BadDuration_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--duration", "soon"), "--duration");

    [Fact]
    public void Loadgen_NonNumericMaxTokens_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--max-tokens", "many"), "many");

    [Fact]
    public void Loadgen_NegativeTemperature_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--temperature", "-1"), "--temperature");

    [Fact]
    public void Loadgen_MissingPromptsFile_ExitCode2()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9", "--prompts", "/nonexistent/p.txt"), "/nonexistent/p.txt");

    [Fact]
    public void Loadgen_NothingListening_ExitCode2NamingTheUrl()
        => AssertUserError(CliHarness.Run("loadgen", "--url", "http://127.0.0.1:9"), "cannot list models at http://127.0.0.1:9/");
}

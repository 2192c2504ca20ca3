using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>The official openai npm client (tests/openai-client/check.mjs) against the fake server: it passes a server that keeps the protocol and catches one that does not.</summary>
public sealed class OpenAiNodeClientTests
{
    [NodeFact]
    public async Task Check_HealthyServer_EveryCheckPasses()
    {
        await using var server = await FakeOpenAiServer.StartAsync();
        var r = await OpenAiNodeClient.RunAsync(server.BaseUrl);
        Assert.True(r.Ok, r.ToString());
        var json = r.Json!;
        Assert.Equal("fake-model", (string)json["model"]!);
        Assert.Equal(" w0 w1 w2 w3 w4 w5", (string)json["chat"]!["content"]!);
        Assert.Equal("stop", (string)json["chat"]!["finish_reason"]!);
        Assert.True((bool)json["chat_stream"]!["done_last"]!);
        Assert.Equal(" w0 w1 w2 w3 w4 w5", (string)json["chat_stream"]!["content"]!);
        Assert.Equal("stop", (string)json["completion"]!["finish_reason"]!); // 6 words < max_tokens 8
        Assert.Equal(404, (int)json["error_unknown_model"]!["status"]!);
        Assert.Equal("NotFoundError", (string)json["error_unknown_model"]!["class"]!);
        Assert.Equal(400, (int)json["error_bad_request"]!["status"]!);
        Assert.Null(json["error_wrong_api_key"]); // only checked when a key is given
    }

    [NodeFact]
    public async Task Check_ApiKey_PassesWithItAndSees401Without()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { ApiKey = "sk-test" });
        var r = await OpenAiNodeClient.RunAsync(new Uri(server.BaseUrl, "v1"), apiKey: "sk-test");
        Assert.True(r.Ok, r.ToString());
        Assert.Equal(401, (int)r.Json!["error_wrong_api_key"]!["status"]!);
    }

    [NodeFact]
    public async Task Check_StreamWithoutDone_FailsNamingIt()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { OmitDone = true });
        var r = await OpenAiNodeClient.RunAsync(server.BaseUrl);
        Assert.Equal(1, r.ExitCode);
        Assert.False(r.Ok);
        Assert.Contains("chat_stream", r.Stderr);
        Assert.Contains("[DONE]", r.Stderr);
        Assert.Equal(" w0 w1 w2 w3 w4 w5", (string)r.Json!["chat"]!["content"]!); // the other checks still ran and passed
    }

    [NodeFact]
    public async Task Check_NothingListening_FailsWithConnectionError()
    {
        var r = await OpenAiNodeClient.RunAsync(new Uri("http://127.0.0.1:9/"));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("models", r.Stderr);
    }
}

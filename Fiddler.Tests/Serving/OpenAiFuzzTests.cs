using Fiddler.Kernels.Generation;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>The default model's tokenizer and limits, with an engine that answers one token at once: parsing and validation at speed.</summary>
public sealed class InstantEngineFixture : IAsyncLifetime
{
    public ServingHarness Harness { get; private set; } = null!;

    public async Task InitializeAsync() => Harness = await ServingHarness.StartAsync(wrap: _ => (_, _, _) => OneToken());

    public async Task DisposeAsync() => await Harness.DisposeAsync();

    private static async IAsyncEnumerable<GeneratedToken> OneToken()
    {
        await Task.Yield();
        yield return new GeneratedToken(42, "x", -0.5f, [(42, -0.5f)]);
    }
}

public sealed class OpenAiFuzzTests(InstantEngineFixture fixture) : IClassFixture<InstantEngineFixture>
{
    private ServingHarness H => fixture.Harness;

    /// <summary>Every field set to every JSON type: some answers are 200, many 400, none 5xx (a client input never is a server error).</summary>
    [Fact]
    public async Task Post_EveryFieldWithEveryJsonType_NeverServerError()
    {
        string[] values = ["null", "true", "0", "1", "-1", "2.5", "1e309", "\"x\"", "\"\"", "[]", "{}", "[1]", "[\"a\"]", "[[1]]", "{\"a\":1}", "99999999999"];
        string[] chatFields = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "stream",
            "stream_options", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "tools", "response_format", "user", "ignore_eos"];
        string[] completionFields = ["prompt", "echo", "suffix", "best_of", "logprobs"];
        var failures = new List<string>();
        async Task Probe(string path, string baseFields, string field, string value)
        {
            string json = $$"""{{{baseFields}},"{{field}}":{{value}}}""";
            using var response = await H.Http.PostAsync(path, new StringContent(json));
            string text = await response.Content.ReadAsStringAsync();
            if ((int)response.StatusCode >= 500 || response.Content.Headers.ContentType?.MediaType is not ("application/json" or "text/event-stream"))
                failures.Add($"{path} {json} → {(int)response.StatusCode} {text}");
        }
        foreach (string field in chatFields)
            foreach (string v in values)
                await Probe("/v1/chat/completions", """ "max_tokens":1,"model":"default-model","messages":[{"role":"user","content":"hi"}]""", field, v);
        foreach (string field in completionFields)
            foreach (string v in values)
                await Probe("/v1/completions", """ "max_tokens":1,"model":"default-model","prompt":"hi" """, field, v);
        Assert.Empty(failures);
    }

    /// <summary>Found by the malformed corpus on the real server: valid JSON may escape an unpaired surrogate in a key,
    /// and System.Text.Json's property lookup throws on it (it was a 500).</summary>
    [Theory]
    [InlineData("/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"\ud800\ud800":1}""")]
    [InlineData("/v1/completions", """{"model":"default-model","prompt":"hi","max_tokens":1,"\udc00\ud800":1}""")]
    [InlineData("/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","\ud800":"x","content":"hi"}],"max_tokens":1}""")]
    public async Task Post_KeyWithUnpairedSurrogateEscape_Returns400(string path, string json)
    {
        var (status, body) = await H.PostAsync(path, json);

        Assert.Equal(System.Net.HttpStatusCode.BadRequest, status);
        OpenAiAssert.Error(body, "invalid_request_error");
    }
}

using System.Net;
using System.Text.Json;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>One server on the default model for the whole class; every request is greedy with few tokens.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public ServingHarness Harness { get; private set; } = null!;
    public async Task InitializeAsync() => Harness = await ServingHarness.StartAsync(queueSize: 64);
    public async Task DisposeAsync() => await Harness.DisposeAsync();
}

public sealed class OpenAiServerTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private ServingHarness H => fixture.Harness;

    private static string Text(JsonElement body) => body.GetProperty("choices")[0].GetProperty("text").GetString()!;
    private static string Content(JsonElement body) => body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
    private static string Finish(JsonElement body) => body.GetProperty("choices")[0].GetProperty("finish_reason").GetString()!;
    private static int Usage(JsonElement body, string name) => body.GetProperty("usage").GetProperty(name).GetInt32();

    private static List<JsonElement> Chunks(List<string> events)
    {
        Assert.Equal("[DONE]", events[^1]);
        return events.Take(events.Count - 1).Select(e => JsonDocument.Parse(e).RootElement.Clone()).ToList();
    }

    [Fact]
    public async Task Completions_PlainGreedy_EqualsInProcessApi()
    {
        const string prompt = "Once upon a time";
        var (status, body) = await H.PostAsync("/v1/completions", $$"""{"model":"default-model","prompt":"{{prompt}}","max_tokens":8,"temperature":0}""");

        Assert.Equal(HttpStatusCode.OK, status);
        var expected = await H.InProcessGreedyAsync(H.Service.Tokenize(prompt), 8);
        Assert.Equal(expected.Text, Text(body));
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        Assert.StartsWith("cmpl-", body.GetProperty("id").GetString());
        Assert.Equal("default-model", body.GetProperty("model").GetString());
        Assert.True(body.GetProperty("created").GetInt64() > 1_600_000_000);
        Assert.Equal(expected.PromptIds.Length, Usage(body, "prompt_tokens"));
        Assert.Equal(expected.Tokens.Length, Usage(body, "completion_tokens"));
        Assert.Equal(expected.PromptIds.Length + expected.Tokens.Length, Usage(body, "total_tokens"));
        Assert.Equal(expected.Finish == Fiddler.Kernels.Generation.FinishReason.Length ? "length" : "stop", Finish(body));
    }

    [Fact]
    public async Task Completions_Stream_ChunksJoinToPlainTextThenUsageThenDone()
    {
        const string request = """{"model":"default-model","prompt":"The king","max_tokens":10,"temperature":0""";
        var (_, plain) = await H.PostAsync("/v1/completions", request + "}");
        var (status, events) = await H.StreamAsync("/v1/completions", request + ""","stream":true,"stream_options":{"include_usage":true}}""");

        Assert.Equal(HttpStatusCode.OK, status);
        var chunks = Chunks(events);
        var usage = chunks[^1];
        Assert.Equal(0, usage.GetProperty("choices").GetArrayLength());
        Assert.Equal(Usage(plain, "total_tokens"), Usage(usage, "total_tokens"));
        var choices = chunks.SkipLast(1).Select(c => c.GetProperty("choices")[0]).ToList();
        Assert.All(chunks.SkipLast(1), c => Assert.Equal(JsonValueKind.Null, c.GetProperty("usage").ValueKind));
        Assert.Equal(Text(plain), string.Concat(choices.Select(c => c.GetProperty("text").GetString())));
        Assert.Equal(Finish(plain), choices[^1].GetProperty("finish_reason").GetString());
        Assert.All(choices.SkipLast(1), c => Assert.Equal(JsonValueKind.Null, c.GetProperty("finish_reason").ValueKind));
        Assert.Single(chunks.Select(c => c.GetProperty("id").GetString()).Distinct());
    }

    [Fact]
    public async Task Completions_StreamWithoutUsage_HasNoUsageField()
    {
        var (_, events) = await H.StreamAsync("/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":3,"stream":true,"temperature":0}""");
        Assert.All(Chunks(events), c => Assert.False(c.TryGetProperty("usage", out _)));
    }

    [Fact]
    public async Task Completions_PromptForms_TextArrayOfOneAndTokenIdsAgree()
    {
        int[] ids = H.Service.Tokenize("The old man");
        string idList = string.Join(",", ids);
        var texts = new List<string>();
        foreach (string prompt in (string[])["\"The old man\"", "[\"The old man\"]", $"[{idList}]", $"[[{idList}]]"])
        {
            var (status, body) = await H.PostAsync("/v1/completions", $$"""{"model":"default-model","prompt":{{prompt}},"max_tokens":3,"temperature":0}""");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(ids.Length, Usage(body, "prompt_tokens"));
            texts.Add(Text(body));
        }
        Assert.Single(texts.Distinct());
    }

    [Fact]
    public async Task Chat_PlainGreedy_EqualsInProcessApiOnTemplatedPrompt()
    {
        var (status, body) = await H.PostAsync("/v1/chat/completions",
            """{"model":"default-model","messages":[{"role":"user","content":"Tell me a story"}],"max_completion_tokens":10,"temperature":0}""");

        Assert.Equal(HttpStatusCode.OK, status);
        int[] prompt = H.Service.Tokenize(H.Service.ApplyChatTemplate([new("user", "Tell me a story")]), addSpecialTokens: false);
        Assert.Equal(1, prompt[0]); // one BOS, from the template's text
        Assert.NotEqual(1, prompt[1]);
        var expected = await H.InProcessGreedyAsync(prompt, 10);
        Assert.Equal(expected.Text, Content(body));
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        Assert.StartsWith("chatcmpl-", body.GetProperty("id").GetString());
        Assert.Equal("assistant", body.GetProperty("choices")[0].GetProperty("message").GetProperty("role").GetString());
        Assert.Equal(prompt.Length, Usage(body, "prompt_tokens"));
        Assert.Equal(expected.Tokens.Length, Usage(body, "completion_tokens"));
    }

    [Fact]
    public void Model_DefaultModel_ServesItsMistralChatTemplate() =>
        Assert.Equal("mistral-instruct", H.Service.Model.ChatTemplate);

    [Fact]
    public async Task Chat_Stream_RoleFirstThenContentThenFinishThenUsage()
    {
        const string request = """{"model":"default-model","messages":[{"role":"user","content":[{"type":"text","text":"Hello"}]}],"max_tokens":8,"temperature":0""";
        var (_, plain) = await H.PostAsync("/v1/chat/completions", request + "}");
        var (status, events) = await H.StreamAsync("/v1/chat/completions", request + ""","stream":true,"stream_options":{"include_usage":true}}""");

        Assert.Equal(HttpStatusCode.OK, status);
        var chunks = Chunks(events);
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        var first = chunks[0].GetProperty("choices")[0].GetProperty("delta");
        Assert.Equal("assistant", first.GetProperty("role").GetString());
        var deltas = chunks.Skip(1).SkipLast(2).Select(c => c.GetProperty("choices")[0].GetProperty("delta").GetProperty("content").GetString());
        Assert.Equal(Content(plain), string.Concat(deltas));
        var last = chunks[^2].GetProperty("choices")[0];
        Assert.Equal(Finish(plain), last.GetProperty("finish_reason").GetString());
        Assert.Equal(0, chunks[^1].GetProperty("choices").GetArrayLength());
        Assert.Equal(Usage(plain, "completion_tokens"), Usage(chunks[^1], "completion_tokens"));
    }

    [Fact]
    public async Task Chat_Logprobs_GreedyTokenIsTopAndAlternativesSorted()
    {
        var (status, body) = await H.PostAsync("/v1/chat/completions",
            """{"model":"default-model","messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0,"logprobs":true,"top_logprobs":3}""");

        Assert.Equal(HttpStatusCode.OK, status);
        var content = body.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content").EnumerateArray().ToList();
        Assert.Equal(Usage(body, "completion_tokens"), content.Count);
        foreach (var entry in content)
        {
            var top = entry.GetProperty("top_logprobs").EnumerateArray().ToList();
            Assert.Equal(3, top.Count);
            var values = top.Select(t => t.GetProperty("logprob").GetSingle()).ToList();
            Assert.Equal(values.OrderDescending(), values);
            Assert.Equal(top[0].GetProperty("token").GetString(), entry.GetProperty("token").GetString());
            // Token strings come through the telemetry decorator's TokenText: never blank for this vocabulary.
            Assert.All(top, t => Assert.NotEqual("", t.GetProperty("token").GetString()));
            Assert.Equal(values[0], entry.GetProperty("logprob").GetSingle(), 4);
            Assert.True(entry.GetProperty("bytes").GetArrayLength() >= 0);
        }
    }

    [Fact]
    public async Task Completions_Logprobs_ParallelArraysOfOneEntryPerToken()
    {
        var (status, body) = await H.PostAsync("/v1/completions",
            """{"model":"default-model","prompt":"Once upon a time","max_tokens":5,"temperature":0,"logprobs":2,"ignore_eos":true}""");

        Assert.Equal(HttpStatusCode.OK, status);
        var lp = body.GetProperty("choices")[0].GetProperty("logprobs");
        Assert.Equal(5, lp.GetProperty("tokens").GetArrayLength());
        Assert.Equal(5, lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.Equal(5, lp.GetProperty("text_offset").GetArrayLength());
        Assert.All(lp.GetProperty("top_logprobs").EnumerateArray(), t => Assert.InRange(t.EnumerateObject().Count(), 1, 2));
        Assert.All(lp.GetProperty("token_logprobs").EnumerateArray(), t => Assert.True(t.GetSingle() <= 0));
    }

    [Fact]
    public async Task Completions_StopString_CutsTextAndFinishesWithStop()
    {
        var (_, free) = await H.PostAsync("/v1/completions", """{"model":"default-model","prompt":"Once upon a time","max_tokens":10,"temperature":0,"ignore_eos":true}""");
        string text = Text(free);
        Assert.True(text.Length >= 6, text);
        string stop = text.Substring(3, 2);
        var (status, body) = await H.PostAsync("/v1/completions",
            $$"""{"model":"default-model","prompt":"Once upon a time","max_tokens":10,"temperature":0,"ignore_eos":true,"stop":[{{JsonSerializer.Serialize(stop)}}]}""");

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("stop", Finish(body));
        Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], Text(body));
    }

    [Fact]
    public async Task Completions_IgnoreEos_GivesMaxTokensAndLength()
    {
        var (status, body) = await H.PostAsync("/v1/completions", """{"model":"default-model","prompt":"x","max_tokens":7,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(7, Usage(body, "completion_tokens"));
        Assert.Equal("length", Finish(body));
    }

    [Fact]
    public async Task Completions_SameSeed_SameSampledText()
    {
        const string request = """{"model":"default-model","prompt":"Once","max_tokens":8,"temperature":1.0,"top_p":0.9,"top_k":50,"seed":1234}""";
        var (_, a) = await H.PostAsync("/v1/completions", request);
        var (_, b) = await H.PostAsync("/v1/completions", request);
        Assert.Equal(Text(a), Text(b));
    }

    [Fact]
    public async Task Models_ListAndGet_DescribeTheServedModel()
    {
        var (status, list) = await H.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("list", list.GetProperty("object").GetString());
        Assert.Equal("default-model", list.GetProperty("data")[0].GetProperty("id").GetString());

        var (one, model) = await H.GetAsync("/v1/models/default-model");
        Assert.Equal(HttpStatusCode.OK, one);
        Assert.Equal("model", model.GetProperty("object").GetString());

        var (missing, error) = await H.GetAsync("/v1/models/gpt-4");
        Assert.Equal(HttpStatusCode.NotFound, missing);
        OpenAiAssert.Error(error, "invalid_request_error", "model", "model_not_found");
    }

    [Fact]
    public async Task Health_AfterProbe_IsOk()
    {
        var (status, body) = await H.GetAsync("/health");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("ok", body.GetProperty("status").GetString());
    }

    [Fact]
    public async Task Completions_32ConcurrentClients_AllCompleteEachEqualToInProcessApi()
    {
        string[] prompts = Enumerable.Range(0, 32).Select(i => $"Story number {i} begins").ToArray();
        var expected = new List<string>();
        foreach (string p in prompts) expected.Add((await H.InProcessGreedyAsync(H.Service.Tokenize(p), 2)).Text);

        var answers = await Task.WhenAll(prompts.Select((p, i) => i % 2 == 0
            ? H.PostAsync("/v1/completions", $$"""{"model":"default-model","prompt":"{{p}}","max_tokens":2,"temperature":0}""")
                .ContinueWith(t => (t.Result.Status, Text(t.Result.Body)))
            : H.StreamAsync("/v1/completions", $$"""{"model":"default-model","prompt":"{{p}}","max_tokens":2,"temperature":0,"stream":true}""")
                .ContinueWith(t => (t.Result.Status, string.Concat(Chunks(t.Result.Events).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()))))));

        Assert.All(answers, a => Assert.Equal(HttpStatusCode.OK, a.Status));
        Assert.Equal(expected, answers.Select(a => a.Item2));
        Assert.Equal(0, H.Service.QueueDepth);
    }

    public static TheoryData<string, string, int, string?, string?> BadRequests => new()
    {
        { "/v1/completions", "{bad json", 400, null, "invalid_json" },
        { "/v1/completions", "", 400, null, "invalid_json" },
        { "/v1/completions", "[1,2]", 400, null, null },
        { "/v1/completions", """{"prompt":"a"}""", 400, "model", null },
        { "/v1/completions", """{"model":"gpt-4","prompt":"a"}""", 404, "model", "model_not_found" },
        { "/v1/completions", """{"model":"default-model"}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":"ten"}""", 400, "max_tokens", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":0}""", 400, "max_tokens", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":1.5}""", 400, "max_tokens", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":100000000000}""", 400, "max_tokens", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","temperature":2.5}""", 400, "temperature", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","temperature":-1}""", 400, "temperature", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","temperature":"0"}""", 400, "temperature", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","top_p":0}""", 400, "top_p", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","top_p":1.01}""", 400, "top_p", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","top_k":-2}""", 400, "top_k", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","n":2}""", 400, "n", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","stop":["a","b","c","d","e"]}""", 400, "stop", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","stop":[1]}""", 400, "stop[0]", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","stop":""}""", 400, "stop", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","seed":"x"}""", 400, "seed", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","stream":"yes"}""", 400, "stream", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","stream_options":{"include_usage":true}}""", 400, "stream_options", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","logprobs":6}""", 400, "logprobs", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","presence_penalty":0.5}""", 400, "presence_penalty", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","frequency_penalty":3}""", 400, "frequency_penalty", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","min_p":0.1}""", 400, "min_p", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","repetition_penalty":1.2}""", 400, "repetition_penalty", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","echo":true}""", 400, "echo", null },
        { "/v1/completions", """{"model":"default-model","prompt":["a","b"]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":[]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":[1,"a"]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":[1,99999]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":[1,-5]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":[1,3000000000]}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a\ud800"}""", 400, "prompt", null },
        { "/v1/completions", """{"model":"default-model","prompt":"a","max_tokens":600}""", 400, "max_tokens", "context_length_exceeded" },
        { "/v1/chat/completions", """{"model":"default-model"}""", 400, "messages", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[]}""", 400, "messages", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":"hi"}""", 400, "messages", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"content":"hi"}]}""", 400, "messages[0].role", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":5}]}""", 400, "messages[0].content", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}""", 400, "messages[0].content[0].type", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"tool","content":"x"}]}""", 400, "messages[0].role", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"user","content":"b"}]}""", 400, "messages[1].tool_calls", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}""", 400, "messages", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"}],"top_logprobs":2}""", 400, "top_logprobs", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":21}""", 400, "top_logprobs", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"}],"tools":[{"type":"function"}]}""", 400, "tools", null },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"}],"max_tokens":512}""", 400, "max_tokens", "context_length_exceeded" },
        { "/v1/chat/completions", """{"model":"default-model","messages":[{"role":"user","content":"a"}],"n":3,"stream":true}""", 400, "n", null },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Post_BadRequest_ReturnsOpenAiError(string path, string body, int status, string? param, string? code)
    {
        var (got, error) = await H.PostAsync(path, body);
        Assert.Equal(status, (int)got);
        OpenAiAssert.Error(error, "invalid_request_error", param, code);
    }

    [Fact]
    public async Task Post_StreamWithBadRequest_ReturnsPlainErrorNotStream()
    {
        var (status, events) = await H.StreamAsync("/v1/completions", """{"model":"default-model","prompt":[1,99999],"stream":true}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        OpenAiAssert.Error(JsonDocument.Parse(events[0]).RootElement, "invalid_request_error", "prompt");
    }

    [Fact]
    public async Task Post_UnknownFieldsAndNulls_AreIgnored()
    {
        var (status, body) = await H.PostAsync("/v1/completions",
            """{"model":"default-model","prompt":"a","max_tokens":2,"user":"u1","temperature":null,"stop":null,"banana":{"x":[1,2]},"presence_penalty":0,"logit_bias":{},"min_p":0,"repetition_penalty":1}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("default-model", body.GetProperty("model").GetString());
    }

    [Fact]
    public async Task Post_DeeplyNestedJson_Returns400()
    {
        string nested = new string('[', 200) + new string(']', 200);
        var (status, error) = await H.PostAsync("/v1/completions", $$"""{"model":"default-model","prompt":"a","x":{{nested}}}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        OpenAiAssert.Error(error, "invalid_request_error");
    }

    [Fact]
    public async Task Get_UnknownRouteOrWrongMethod_ReturnsOpenAiError()
    {
        var (status, error) = await H.GetAsync("/v2/anything");
        Assert.Equal(HttpStatusCode.NotFound, status);
        OpenAiAssert.Error(error, "invalid_request_error");
        var (wrong, error2) = await H.GetAsync("/v1/completions");
        Assert.True((int)wrong is 404 or 405);
        OpenAiAssert.Error(error2);
    }
}

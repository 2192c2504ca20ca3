using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Fiddler.Tests.Serving;

/// <summary>How the fake server behaves; the defaults answer like a healthy server.</summary>
public sealed record FakeServerOptions
{
    public string ModelId { get; init; } = "fake-model";
    /// <summary>When set, /v1/* answers 401 without <c>Authorization: Bearer {ApiKey}</c> (/health stays open).</summary>
    public string? ApiKey { get; init; }
    /// <summary>Every n-th valid generation request is answered 429, as a full queue would (0: never).</summary>
    public int RejectEvery { get; init; }
    /// <summary>Words generated at most; fewer than max_tokens means finish_reason "stop".</summary>
    public int MaxWords { get; init; } = 6;
    public TimeSpan TokenDelay { get; init; } = TimeSpan.Zero;
    /// <summary>A broken server: streams close without <c>data: [DONE]</c>.</summary>
    public bool OmitDone { get; init; }
    /// <summary>A broken server: a body that is not JSON escapes as an unhandled exception (Kestrel answers 500).</summary>
    public bool ThrowOnBadJson { get; init; }
}

/// <summary>
/// A small OpenAI-compatible server (Kestrel on 127.0.0.1, port 0) with the routes and answers <c>fiddler serve</c>
/// promises: chat and legacy completions (plain and SSE ending <c>data: [DONE]</c>), /v1/models, /health, OpenAI error
/// bodies, 400/401/404/429. It generates "w0 w1 ..." words; the serving tools are tested against it.
/// </summary>
public sealed class FakeOpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly FakeServerOptions _options;
    private int _generations;
    private int _rejections;

    private FakeOpenAiServer(WebApplication app, FakeServerOptions options, Uri baseUrl)
    {
        _app = app;
        _options = options;
        BaseUrl = baseUrl;
    }

    /// <summary>The server root, e.g. http://127.0.0.1:41234/ (no /v1).</summary>
    public Uri BaseUrl { get; }
    /// <summary>Valid generation requests seen (answered or rejected).</summary>
    public int Generations => Volatile.Read(ref _generations);
    public int Rejections => Volatile.Read(ref _rejections);

    public static async Task<FakeOpenAiServer> StartAsync(FakeServerOptions? options = null)
    {
        options ??= new FakeServerOptions();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        FakeOpenAiServer? server = null;
        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/v1/models", (HttpContext c) => server!.Models(c));
        app.MapPost("/v1/chat/completions", (HttpContext c) => server!.GenerateAsync(c, chat: true));
        app.MapPost("/v1/completions", (HttpContext c) => server!.GenerateAsync(c, chat: false));
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server = new FakeOpenAiServer(app, options, new Uri(address.TrimEnd('/') + "/"));
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private bool Authorized(HttpContext c) => _options.ApiKey is null || c.Request.Headers.Authorization.ToString() == $"Bearer {_options.ApiKey}";

    private Task Models(HttpContext c)
    {
        if (!Authorized(c)) return Error(c, 401, "invalid api key", "authentication_error", null, "invalid_api_key");
        var body = new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(new JsonObject { ["id"] = _options.ModelId, ["object"] = "model", ["created"] = 1_700_000_000, ["owned_by"] = "fiddler" }),
        };
        return Json(c, 200, body);
    }

    private async Task GenerateAsync(HttpContext c, bool chat)
    {
        if (!Authorized(c)) { await Error(c, 401, "invalid api key", "authentication_error", null, "invalid_api_key"); return; }
        byte[] raw;
        try
        {
            using var buffer = new MemoryStream();
            await c.Request.Body.CopyToAsync(buffer, c.RequestAborted);
            raw = buffer.ToArray();
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
        {
            await Error(c, e.StatusCode, e.Message, "invalid_request_error", null, null);
            return;
        }
        var parsed = FakeRequestParser.Parse(raw, chat, _options.ThrowOnBadJson);
        if (parsed.Error is { } err) { await Error(c, 400, err.Message, "invalid_request_error", err.Param, null); return; }
        var request = parsed.Request!;
        if (request.Model != _options.ModelId)
        {
            await Error(c, 404, $"The model '{request.Model}' does not exist", "invalid_request_error", "model", "model_not_found");
            return;
        }
        int n = Interlocked.Increment(ref _generations);
        if (_options.RejectEvery > 0 && n % _options.RejectEvery == 0)
        {
            Interlocked.Increment(ref _rejections);
            await Error(c, 429, "the queue is full; retry later", "rate_limit_error", null, "queue_full");
            return;
        }
        int words = Math.Min(request.MaxTokens, _options.MaxWords);
        string finish = words == request.MaxTokens ? "length" : "stop";
        string id = $"{(chat ? "chatcmpl" : "cmpl")}-{n}";
        if (request.Stream) await StreamAsync(c, chat, id, request.Model, words, finish);
        else
        {
            string text = string.Concat(Enumerable.Range(0, words).Select(i => $" w{i}"));
            var choice = chat
                ? new JsonObject { ["index"] = 0, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = text }, ["finish_reason"] = finish, ["logprobs"] = null }
                : new JsonObject { ["index"] = 0, ["text"] = text, ["finish_reason"] = finish, ["logprobs"] = null };
            var body = Envelope(id, chat ? "chat.completion" : "text_completion", request.Model, choice);
            body["usage"] = new JsonObject { ["prompt_tokens"] = request.PromptWords, ["completion_tokens"] = words, ["total_tokens"] = request.PromptWords + words };
            await Json(c, 200, body);
        }
    }

    private async Task StreamAsync(HttpContext c, bool chat, string id, string model, int words, string finish)
    {
        c.Response.StatusCode = 200;
        c.Response.ContentType = "text/event-stream";
        c.Response.Headers.CacheControl = "no-cache";
        string objectName = chat ? "chat.completion.chunk" : "text_completion";
        async Task Send(JsonObject choice)
        {
            await c.Response.WriteAsync($"data: {Envelope(id, objectName, model, choice).ToJsonString()}\n\n", c.RequestAborted);
            await c.Response.Body.FlushAsync(c.RequestAborted);
        }
        if (chat) await Send(new JsonObject { ["index"] = 0, ["delta"] = new JsonObject { ["role"] = "assistant", ["content"] = "" }, ["finish_reason"] = null });
        for (int i = 0; i < words; i++)
        {
            if (_options.TokenDelay > TimeSpan.Zero) await Task.Delay(_options.TokenDelay, c.RequestAborted);
            await Send(chat
                ? new JsonObject { ["index"] = 0, ["delta"] = new JsonObject { ["content"] = $" w{i}" }, ["finish_reason"] = null }
                : new JsonObject { ["index"] = 0, ["text"] = $" w{i}", ["logprobs"] = null, ["finish_reason"] = null });
        }
        await Send(chat
            ? new JsonObject { ["index"] = 0, ["delta"] = new JsonObject(), ["finish_reason"] = finish }
            : new JsonObject { ["index"] = 0, ["text"] = "", ["logprobs"] = null, ["finish_reason"] = finish });
        if (!_options.OmitDone) await c.Response.WriteAsync("data: [DONE]\n\n", c.RequestAborted);
    }

    private static JsonObject Envelope(string id, string objectName, string model, JsonObject choice) => new()
    {
        ["id"] = id, ["object"] = objectName, ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ["model"] = model,
        ["choices"] = new JsonArray(choice),
    };

    private static Task Error(HttpContext c, int status, string message, string type, string? param, string? code) =>
        Json(c, status, new JsonObject
        {
            ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code },
        });

    private static async Task Json(HttpContext c, int status, JsonObject body)
    {
        c.Response.StatusCode = status;
        c.Response.ContentType = "application/json";
        await c.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(body.ToJsonString()), c.RequestAborted);
    }
}

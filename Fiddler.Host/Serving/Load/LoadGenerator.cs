using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Fiddler.Host.Serving.Load;

/// <summary>How one request ended: answered (200), rejected by a full queue (429) or failed (any other end).</summary>
public enum RequestOutcome { Ok, Rejected, Failed }

/// <summary>
/// One request's measurements. <see cref="FailureKind"/> names a failure: the HTTP status ("500", "400"), or
/// "timeout", "connection", "bad-response" (a 200 whose body is not the protocol), "stream-unterminated" (an SSE
/// stream that closed before <c>data: [DONE]</c>), "stream-error" (an error event inside the stream).
/// </summary>
public sealed record RequestSample(RequestOutcome Outcome, string? FailureKind, double LatencyMs, double? TimeToFirstTokenMs, int CompletionTokens);

/// <summary>
/// A closed-loop load generator for an OpenAI-compatible server (<c>fiddler serve</c>): <see cref="LoadOptions.Concurrency"/>
/// clients each send a request, wait for the whole answer, and send the next. Counts completion tokens from the
/// answer's <c>usage</c>, or, for a stream without usage, one per chunk that carries text.
/// </summary>
public sealed class LoadGenerator : IDisposable
{
    private readonly LoadOptions _options;
    private readonly HttpClient _http;
    private readonly Uri _root;

    public LoadGenerator(LoadOptions options, HttpMessageHandler? handler = null)
    {
        options.Validate();
        _options = options;
        // Root with a trailing slash, so "v1/..." resolves under it; a given /v1 suffix is dropped (we add it).
        string root = options.BaseUrl.AbsoluteUri.TrimEnd('/');
        if (root.EndsWith("/v1", StringComparison.Ordinal)) root = root[..^3];
        _root = new Uri(root + "/");
        _http = new HttpClient(handler ?? new SocketsHttpHandler { MaxConnectionsPerServer = options.Concurrency, PooledConnectionLifetime = TimeSpan.FromMinutes(10) })
        {
            // Per-request deadlines come from RequestTimeout (a CancellationTokenSource per request).
            Timeout = Timeout.InfiniteTimeSpan,
        };
        if (options.ApiKey is { Length: > 0 } key) _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
    }

    public void Dispose() => _http.Dispose();

    /// <summary>The first model id GET /v1/models lists. Throws <see cref="HttpRequestException"/> or <see cref="InvalidDataException"/>.</summary>
    public async Task<string> ResolveModelAsync(CancellationToken cancel = default)
    {
        using var response = await _http.GetAsync(new Uri(_root, "v1/models"), cancel);
        string body = await response.Content.ReadAsStringAsync(cancel);
        if (!response.IsSuccessStatusCode)
            throw new HttpRequestException($"GET /v1/models answered {(int)response.StatusCode}: {Shorten(body)}", null, response.StatusCode);
        try
        {
            var data = JsonNode.Parse(body)?["data"]?.AsArray();
            if (data is { Count: > 0 } && data[0]?["id"]?.GetValue<string>() is { Length: > 0 } id) return id;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException) { }
        throw new InvalidDataException($"GET /v1/models listed no model id: {Shorten(body)}");
    }

    /// <summary>Runs the load; cancelling stops it early and reports what had finished.</summary>
    public async Task<LoadReport> RunAsync(CancellationToken cancel = default)
    {
        string model;
        try { model = _options.Model ?? await ResolveModelAsync(cancel); }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // Stopped before the first request: a report of nothing, as a run stopped later reports what finished.
            return LoadReport.From(_options, "(not resolved)", [], TimeSpan.Zero);
        }
        var samples = new ConcurrentBag<RequestSample>();
        int next = -1;
        var started = Stopwatch.StartNew();
        long deadline = _options.Duration is { } d ? Stopwatch.GetTimestamp() + (long)(d.TotalSeconds * Stopwatch.Frequency) : long.MaxValue;

        async Task Client()
        {
            while (!cancel.IsCancellationRequested)
            {
                int index = Interlocked.Increment(ref next);
                if (_options.Duration is null ? index >= _options.Requests : Stopwatch.GetTimestamp() >= deadline) return;
                try { samples.Add(await SendOneAsync(model, _options.Prompts[index % _options.Prompts.Count], cancel)); }
                catch (OperationCanceledException) when (cancel.IsCancellationRequested) { return; }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, _options.Concurrency).Select(_ => Task.Run(Client, CancellationToken.None)));
        return LoadReport.From(_options, model, [.. samples], started.Elapsed);
    }

    private async Task<RequestSample> SendOneAsync(string model, string prompt, CancellationToken cancel)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(_options.RequestTimeout);
        long start = Stopwatch.GetTimestamp();
        double Elapsed() => Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_root, _options.Chat ? "v1/chat/completions" : "v1/completions"))
            {
                Content = new ByteArrayContent(RequestBody(model, prompt)) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
            };
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, deadline.Token);
            int status = (int)response.StatusCode;
            if (status != 200)
            {
                await response.Content.ReadAsByteArrayAsync(deadline.Token); // the error body is part of the answer's latency
                return new RequestSample(status == 429 ? RequestOutcome.Rejected : RequestOutcome.Failed, status == 429 ? null : status.ToString(), Elapsed(), null, 0);
            }
            return _options.Stream
                ? await ReadStreamAsync(response, start, deadline.Token)
                : ReadWhole(await response.Content.ReadAsStringAsync(deadline.Token), Elapsed());
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
        {
            return new RequestSample(RequestOutcome.Failed, "timeout", Elapsed(), null, 0);
        }
        catch (HttpRequestException)
        {
            return new RequestSample(RequestOutcome.Failed, "connection", Elapsed(), null, 0);
        }
        catch (IOException)
        {
            return new RequestSample(RequestOutcome.Failed, "connection", Elapsed(), null, 0);
        }
    }

    private byte[] RequestBody(string model, string prompt)
    {
        var body = new JsonObject { ["model"] = model };
        if (_options.Chat) body["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = prompt });
        else body["prompt"] = prompt;
        body["max_tokens"] = _options.MaxTokens;
        body["temperature"] = _options.Temperature;
        body["stream"] = _options.Stream;
        return Encoding.UTF8.GetBytes(body.ToJsonString());
    }

    private static RequestSample ReadWhole(string body, double latencyMs)
    {
        try
        {
            var root = JsonNode.Parse(body);
            if (root?["choices"] is not JsonArray) return new RequestSample(RequestOutcome.Failed, "bad-response", latencyMs, null, 0);
            int tokens = root["usage"]?["completion_tokens"]?.GetValue<int>() ?? 0;
            return new RequestSample(RequestOutcome.Ok, null, latencyMs, null, tokens);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            return new RequestSample(RequestOutcome.Failed, "bad-response", latencyMs, null, 0);
        }
    }

    /// <summary>Reads an SSE stream to <c>data: [DONE]</c>; the first chunk with text marks the time to first token.</summary>
    private async Task<RequestSample> ReadStreamAsync(HttpResponseMessage response, long start, CancellationToken cancel)
    {
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel), Encoding.UTF8);
        double? ttft = null;
        int textChunks = 0;
        int? usageTokens = null;
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            if (!line.StartsWith("data:", StringComparison.Ordinal)) continue; // comments, event:, id:, blank separators
            string data = line[5..].Trim();
            if (data == "[DONE]")
                return new RequestSample(RequestOutcome.Ok, null, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ttft, usageTokens ?? textChunks);
            try
            {
                var chunk = JsonNode.Parse(data);
                if (chunk?["error"] is JsonObject)
                    return new RequestSample(RequestOutcome.Failed, "stream-error", Stopwatch.GetElapsedTime(start).TotalMilliseconds, ttft, 0);
                var choice = chunk?["choices"]?[0];
                string? text = _options.Chat ? choice?["delta"]?["content"]?.GetValue<string>() : choice?["text"]?.GetValue<string>();
                if (!string.IsNullOrEmpty(text))
                {
                    textChunks++;
                    ttft ??= Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                }
                if (chunk?["usage"]?["completion_tokens"] is JsonValue used) usageTokens = used.GetValue<int>();
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                return new RequestSample(RequestOutcome.Failed, "bad-response", Stopwatch.GetElapsedTime(start).TotalMilliseconds, ttft, 0);
            }
        }
        return new RequestSample(RequestOutcome.Failed, "stream-unterminated", Stopwatch.GetElapsedTime(start).TotalMilliseconds, ttft, 0);
    }

    private static string Shorten(string text) => text.Length <= 200 ? text : text[..200] + "…";
}

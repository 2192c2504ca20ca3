using System.Text;

namespace Fiddler.Tests.Serving;

/// <summary>
/// One hostile HTTP request: method, path (with query), headers (Content-Type among them when one is sent) and the raw
/// body bytes, exactly as they go on the wire. <see cref="Name"/> is "family/endpoint/detail", unique in a corpus.
/// </summary>
public sealed record MalformedCase(string Name, HttpMethod Method, string Path, IReadOnlyList<KeyValuePair<string, string>> Headers, byte[] Body)
{
    /// <summary>The request against <paramref name="root"/> (the server root); content headers go on the content.</summary>
    public HttpRequestMessage ToRequest(Uri root)
    {
        var request = new HttpRequestMessage(Method, new Uri(root, Path.TrimStart('/')));
        bool contentHeaders = Body.Length > 0 || Headers.Any(h => IsContentHeader(h.Key));
        if (contentHeaders) request.Content = new TrackedContent(Body);
        foreach (var (key, value) in Headers)
        {
            if (IsContentHeader(key)) request.Content!.Headers.TryAddWithoutValidation(key, value);
            // A header on the request replaces the client's default of that name (e.g. its Authorization).
            else request.Headers.TryAddWithoutValidation(key, value);
        }
        return request;
    }

    /// <summary>Whether the body of a request made by <see cref="ToRequest"/> was sent whole (false: the server closed the connection first).</summary>
    public static bool BodySent(HttpRequestMessage request) => request.Content is not TrackedContent t || t.Sent;

    /// <summary>Bytes as content that remembers whether they were all written to the connection.</summary>
    private sealed class TrackedContent(byte[] body) : HttpContent
    {
        public bool Sent { get; private set; }

        protected override async Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context)
        {
            await stream.WriteAsync(body);
            Sent = true;
        }

        protected override bool TryComputeLength(out long length)
        {
            length = body.Length;
            return true;
        }
    }

    private static bool IsContentHeader(string key) => key.StartsWith("Content-", StringComparison.OrdinalIgnoreCase);

    public override string ToString() => $"{Name} ({Method} {Path}, {Body.Length} bytes)";
}

/// <summary>
/// A deterministic corpus (≥ 1,000 cases for any seed) of malformed and hostile requests against the OpenAI routes
/// <c>fiddler serve</c> answers: invalid JSON, every field with wrong types and out-of-range values, missing fields,
/// odd roles and content parts, huge bodies and prompts, odd Unicode and invalid UTF-8, wrong content types and
/// methods, unknown routes and header abuse, then seeded random mutations of valid bodies. A server passes when it
/// answers every case below 500 and still serves a well-formed request afterwards (<see cref="RunAsync"/>).
/// </summary>
public static partial class MalformedRequests
{
    /// <summary>The model id the fake server serves; pass the real one to <see cref="All(int, string)"/> for <c>fiddler serve</c>.</summary>
    public const string DefaultModel = "fake-model";

    public static IEnumerable<MalformedCase> All(int seed) => All(seed, DefaultModel);

    /// <summary>
    /// The corpus for <paramref name="model"/> (bodies are otherwise valid, so the malformation is what gets judged).
    /// Lazy: a few bodies are 8 MiB and one is 33 MiB; enumerate rather than materialize where memory matters.
    /// </summary>
    public static IEnumerable<MalformedCase> All(int seed, string model)
    {
        var random = new Random(seed);
        var endpoints = Endpoints(model);
        return InvalidJson(endpoints, random)
            .Concat(WrongTypes(endpoints))
            .Concat(FieldSpecific(endpoints))
            .Concat(Messages(endpoints[0]))
            .Concat(Prompts(endpoints[1]))
            .Concat(Missing(endpoints))
            .Concat(Huge(endpoints))
            .Concat(Unicode(endpoints))
            .Concat(ContentTypes(endpoints))
            .Concat(Methods())
            .Concat(Routes(model))
            .Concat(HeaderAbuse(endpoints))
            .Concat(Semantic(endpoints))
            .Concat(Mutants(endpoints, random, count: 250));
    }

    /// <summary>A POST route and the fields of its minimal valid body (raw JSON values, in order).</summary>
    internal sealed record Endpoint(string Name, string Path, (string Key, string Raw)[] Base)
    {
        /// <summary>The base body with fields replaced (or appended); a null raw value removes the field.</summary>
        public string Body(params (string Key, string? Raw)[] changes)
        {
            var pairs = Base.Select(p => (p.Key, Raw: (string?)p.Raw)).ToList();
            foreach (var (key, raw) in changes)
            {
                int i = pairs.FindIndex(p => p.Key == key);
                if (i >= 0) pairs[i] = (key, raw);
                else pairs.Add((key, raw));
            }
            return "{" + string.Join(",", pairs.Where(p => p.Raw is not null).Select(p => $"{Quote(p.Key)}:{p.Raw}")) + "}";
        }

        public string Valid => Body();
    }

    internal static Endpoint[] Endpoints(string model) =>
    [
        new("chat", "/v1/chat/completions", [("model", Quote(model)), ("messages", """[{"role":"user","content":"Hello"}]"""), ("max_tokens", "4")]),
        new("completions", "/v1/completions", [("model", Quote(model)), ("prompt", "\"Hello\""), ("max_tokens", "4")]),
    ];

    /// <summary>A JSON string literal that keeps non-ASCII text as raw UTF-8 (escaping only what JSON requires).</summary>
    internal static string Quote(string s)
    {
        var b = new StringBuilder(s.Length + 2).Append('"');
        foreach (char c in s)
        {
            if (c == '"' || c == '\\') b.Append('\\').Append(c);
            else if (c < 0x20) b.Append($"\\u{(int)c:x4}");
            else b.Append(c);
        }
        return b.Append('"').ToString();
    }

    private static readonly KeyValuePair<string, string> JsonType = new("Content-Type", "application/json");

    internal static MalformedCase Post(string name, Endpoint e, string body) => Post(name, e, Encoding.UTF8.GetBytes(body));

    internal static MalformedCase Post(string name, Endpoint e, byte[] body, params KeyValuePair<string, string>[] headers) =>
        new(name, HttpMethod.Post, e.Path, headers.Length == 0 ? [JsonType] : headers, body);

    internal static KeyValuePair<string, string> Header(string key, string value) => new(key, value);

    internal static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();
}

using System.Text;

namespace Fiddler.Tests.Serving;

// The wire families: huge bodies, Unicode and bytes, content types, methods, routes, headers, semantics, mutants.
public static partial class MalformedRequests
{
    private const int EightMiB = 8 << 20;

    private static IEnumerable<MalformedCase> Huge(Endpoint[] endpoints)
    {
        foreach (var e in endpoints)
        {
            string field = e.Name == "chat" ? "messages" : "prompt";
            string Text(string s) => e.Name == "chat" ? $"[{{\"role\":\"user\",\"content\":{s}}}]" : s;
            yield return Post($"huge/{e.Name}/prompt-8mib", e, e.Body((field, Text(Quote(new string('a', EightMiB))))));
            yield return Post($"huge/{e.Name}/prompt-1m-words", e, e.Body((field, Text(Quote(string.Concat(Enumerable.Repeat("word ", 200_000)))))));
            yield return Post($"huge/{e.Name}/prompt-250k-emoji", e, e.Body((field, Text(Quote(string.Concat(Enumerable.Repeat("🙂", 250_000)))))));
            yield return Post($"huge/{e.Name}/prompt-100k-newlines", e, e.Body((field, Text(Quote(new string('\n', 100_000))))));
            yield return Post($"huge/{e.Name}/whitespace-padding-8mib", e, new string(' ', EightMiB) + e.Valid);
            yield return Post($"huge/{e.Name}/unknown-field-8mib", e, e.Body(("padding", Quote(new string('p', EightMiB)))));
            var junk = new byte[EightMiB];
            new Random(8).NextBytes(junk);
            yield return Post($"huge/{e.Name}/random-bytes-8mib", e, junk);
        }
        // Above Kestrel's default 30,000,000-byte body limit: a 413, or the connection closed while the body is still
        // being sent (see FuzzReport.DroppedWhileSending); with Expect: 100-continue the 413 can come before the body.
        byte[] huge = Encoding.UTF8.GetBytes(endpoints[0].Body(("user", Quote(new string('z', 33 << 20)))));
        yield return Post("huge/chat/body-33mib", endpoints[0], huge);
        yield return Post("huge/chat/body-33mib-expect-continue", endpoints[0], huge, JsonType, Header("Expect", "100-continue"));
    }

    private static IEnumerable<MalformedCase> Unicode(Endpoint[] endpoints)
    {
        var texts = new (string Name, string Raw)[]
        {
            ("lone-high-surrogate", "\"a\\ud800b\""), ("lone-low-surrogate", "\"a\\udc00b\""), ("two-high-surrogates", "\"\\ud800\\ud800\""),
            ("reversed-pair", "\"\\udc00\\ud800\""), ("surrogate-at-end", "\"abc\\ud83d\""), ("nul-escape", "\"a\\u0000b\""),
            ("rtl-override", Quote("abc\u202Edef\u200F\u200E")), ("emoji-zwj", Quote("👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏽‍🚀")),
            ("combining-10k", Quote("e" + string.Concat(Enumerable.Repeat("\u0301\u0308", 5_000)))), ("bom-inside", Quote("a\uFEFFb")),
            ("noncharacters", "\"\\uffff\\ufffe\""), ("private-use", Quote("\uE000\uF8FF")), ("astral-escaped", "\"\\ud83d\\ude42\""),
            ("bidi-isolates", Quote("\u2066\u2067\u2068\u2069")), ("zero-width", Quote("\u200B\u200C\u200D\u2060")),
            ("special-token-text", Quote("</s><s><|endoftext|><|im_end|>[INST]")), ("cjk", Quote("你好，世界。こんにちは")),
        };
        var bytes = new (string Name, byte[] Bytes)[]
        {
            ("ff", [0xFF]), ("overlong-nul", [0xC0, 0x80]), ("encoded-surrogate", [0xED, 0xA0, 0x80]), ("truncated-3byte", [0xE2, 0x82]),
            ("above-10ffff", [0xF4, 0x90, 0x80, 0x80]), ("lone-continuation", [0x80]), ("nul-byte", [0x00]), ("fe-ff", [0xFE, 0xFF]),
        };
        foreach (var e in endpoints)
        {
            string field = e.Name == "chat" ? "messages" : "prompt";
            string Text(string s) => e.Name == "chat" ? $"[{{\"role\":\"user\",\"content\":{s}}}]" : s;
            foreach (var (name, raw) in texts)
            {
                yield return Post($"unicode/{e.Name}/prompt-{name}", e, e.Body((field, Text(raw))));
                yield return Post($"unicode/{e.Name}/model-{name}", e, e.Body(("model", raw)));
                yield return Post($"unicode/{e.Name}/stop-{name}", e, e.Body(("stop", raw)));
                yield return Post($"unicode/{e.Name}/key-{name}", e, e.Valid[..^1] + $",{raw}:1}}");
            }
            if (e.Name == "chat")
                yield return Post("unicode/chat/role-lone-surrogate", e, e.Body(("messages", "[{\"role\":\"us\\ud800er\",\"content\":\"hi\"}]")));
            // Invalid UTF-8 spliced into the raw body: inside the prompt string, the model string, a key, and outside any string.
            foreach (var (name, b) in bytes)
            {
                string marker = "\u0001MARK\u0001";
                byte[] Splice(string body) => SpliceBytes(Encoding.UTF8.GetBytes(body), Encoding.UTF8.GetBytes(marker), b);
                yield return Post($"utf8/{e.Name}/prompt-{name}", e, Splice(e.Body((field, Text(Quote("he" + marker + "llo"))))));
                yield return Post($"utf8/{e.Name}/model-{name}", e, Splice(e.Body(("model", Quote(marker)))));
                yield return Post($"utf8/{e.Name}/key-{name}", e, Splice(e.Body((marker, "1"))));
                yield return Post($"utf8/{e.Name}/outside-string-{name}", e, Concat(b, Encoding.UTF8.GetBytes(e.Valid)));
            }
        }
    }

    /// <summary>The body with its one (JSON-escaped) marker replaced by raw bytes.</summary>
    private static byte[] SpliceBytes(byte[] body, byte[] markerUtf8, byte[] insert)
    {
        byte[] escaped = Encoding.UTF8.GetBytes(Quote(Encoding.UTF8.GetString(markerUtf8)).Trim('"'));
        int at = body.AsSpan().IndexOf(escaped);
        return at < 0 ? Concat(body, insert) : Concat(body[..at], insert, body[(at + escaped.Length)..]);
    }

    private static IEnumerable<MalformedCase> ContentTypes(Endpoint[] endpoints)
    {
        var types = new (string Name, string? Value)[]
        {
            ("none", null), ("text-plain", "text/plain"), ("form", "application/x-www-form-urlencoded"), ("multipart", "multipart/form-data; boundary=xyz"),
            ("xml", "application/xml"), ("json-utf16-charset", "application/json; charset=utf-16"), ("json-latin1-charset", "application/json; charset=latin1"),
            ("json-bogus-charset", "application/json; charset=klingon"), ("jsonx", "application/jsonx"), ("star", "*/*"), ("garbage", ";;;=="),
            ("event-stream", "text/event-stream"), ("octet-stream", "application/octet-stream"), ("json-1k-params", "application/json; " + string.Join("; ", Enumerable.Range(0, 1000).Select(i => $"p{i}=v"))),
        };
        foreach (var e in endpoints)
        {
            byte[] valid = Encoding.UTF8.GetBytes(e.Valid);
            foreach (var (name, value) in types)
                yield return new MalformedCase($"content-type/{e.Name}/{name}", HttpMethod.Post, e.Path, value is null ? [] : [Header("Content-Type", value)], valid);
            yield return new MalformedCase($"content-type/{e.Name}/form-body", HttpMethod.Post, e.Path, [Header("Content-Type", "application/x-www-form-urlencoded")],
                Encoding.UTF8.GetBytes($"model={DefaultModel}&prompt=Hello&max_tokens=4"));
            yield return new MalformedCase($"content-type/{e.Name}/multipart-body", HttpMethod.Post, e.Path, [Header("Content-Type", "multipart/form-data; boundary=xyz")],
                Encoding.UTF8.GetBytes($"--xyz\r\nContent-Disposition: form-data; name=\"json\"\r\n\r\n{e.Valid}\r\n--xyz--\r\n"));
            yield return new MalformedCase($"content-type/{e.Name}/no-body-no-type", HttpMethod.Post, e.Path, [], []);
            yield return new MalformedCase($"content-type/{e.Name}/gzip-encoding-plain-body", HttpMethod.Post, e.Path, [JsonType, Header("Content-Encoding", "gzip")], valid);
            yield return new MalformedCase($"content-type/{e.Name}/br-encoding-plain-body", HttpMethod.Post, e.Path, [JsonType, Header("Content-Encoding", "br")], valid);
            yield return new MalformedCase($"content-type/{e.Name}/unknown-encoding", HttpMethod.Post, e.Path, [JsonType, Header("Content-Encoding", "zstd-9000")], valid);
        }
    }

    private static IEnumerable<MalformedCase> Methods()
    {
        var postRoutes = new[] { "/v1/chat/completions", "/v1/completions" };
        var getRoutes = new[] { "/v1/models", "/health" };
        var methods = new[] { HttpMethod.Get, HttpMethod.Put, HttpMethod.Delete, HttpMethod.Patch, HttpMethod.Head, HttpMethod.Options, HttpMethod.Trace, new HttpMethod("FOO") };
        foreach (string route in postRoutes)
            foreach (var m in methods)
                yield return new MalformedCase($"method/{m.Method}{route}", m, route, [], []);
        foreach (string route in getRoutes)
            foreach (var m in methods.Where(m => m != HttpMethod.Get && m != HttpMethod.Head).Prepend(HttpMethod.Post))
                yield return new MalformedCase($"method/{m.Method}{route}", m, route, [JsonType], "{}"u8.ToArray());
        yield return new MalformedCase("method/GET/v1/chat/completions-with-body", HttpMethod.Get, "/v1/chat/completions", [JsonType],
            Encoding.UTF8.GetBytes(Endpoints(DefaultModel)[0].Valid));
    }

    private static IEnumerable<MalformedCase> Routes(string model)
    {
        var paths = new[]
        {
            "/", "/v1", "/v1/", "/v1/chat/completion", "/v1/chat/completions/", "/V1/CHAT/COMPLETIONS", "/v2/chat/completions", "/v1/engines",
            "/v1/embeddings", "/v1/responses", "/v1/audio/transcriptions", "/v1/models/" + Uri.EscapeDataString(model), "/v1/models/no-such-model",
            "/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/v1/chat/completions%00", "/v1/chat%2Fcompletions",
            "/v1/chat/completions?stream=true&n=2", "/v1/models?a=%ZZ&b=%", "/health?verbose=" + new string('v', 4000), "/favicon.ico", "/v1/é/ü",
            "/" + new string('a', 9000), "/v1/" + string.Concat(Enumerable.Repeat("x/", 2000)), "//v1//models", "/v1/models%20", "/.env", "/metrics/../v1/models",
        };
        foreach (string path in paths)
        {
            string shortName = path.Length > 60 ? $"{path[..40]}…({path.Length} chars)" : path;
            yield return new MalformedCase($"route/GET{shortName}", HttpMethod.Get, path, [], []);
            yield return new MalformedCase($"route/POST{shortName}", HttpMethod.Post, path, [JsonType], Encoding.UTF8.GetBytes(Endpoints(model)[0].Valid));
        }
    }

    private static IEnumerable<MalformedCase> HeaderAbuse(Endpoint[] endpoints)
    {
        var headers = new (string Name, KeyValuePair<string, string>[] Headers)[]
        {
            ("auth-16kib-bearer", [Header("Authorization", "Bearer " + new string('k', 16 << 10))]),
            ("auth-100kib", [Header("Authorization", "Bearer " + new string('k', 100 << 10))]),
            ("auth-basic", [Header("Authorization", "Basic dXNlcjpwYXNz")]), ("auth-bearer-no-token", [Header("Authorization", "Bearer")]),
            ("auth-bearer-empty", [Header("Authorization", "Bearer ")]), ("auth-lowercase", [Header("Authorization", "bearer sk-x")]),
            ("auth-three-words", [Header("Authorization", "Bearer a b c")]), ("auth-garbage", [Header("Authorization", "%%%%%%")]),
            ("auth-twice", [Header("Authorization", "Bearer a"), Header("Authorization", "Bearer b")]),
            ("api-key-header", [Header("api-key", "sk-x"), Header("x-api-key", new string('x', 8000))]),
            ("custom-64kib", [Header("X-Fiddler-Junk", new string('j', 64 << 10))]),
            ("200-headers", Enumerable.Range(0, 200).Select(i => Header($"X-H{i}", $"v{i}")).ToArray()),
            ("accept-html", [Header("Accept", "text/html")]), ("accept-event-stream", [Header("Accept", "text/event-stream")]),
            ("accept-garbage", [Header("Accept", ";;;q=abc")]), ("accept-encoding-everything", [Header("Accept-Encoding", "gzip, br, zstd, deflate, compress, identity;q=0")]),
            ("host-evil", [Header("Host", "evil.example")]), ("expect-100", [Header("Expect", "100-continue")]),
            ("x-forwarded-junk", [Header("X-Forwarded-For", "999.999.999.999, ::zz, <script>"), Header("X-Forwarded-Proto", "gopher")]),
            ("request-id-8k", [Header("X-Request-Id", new string('r', 8192))]), ("user-agent-empty", [Header("User-Agent", "")]),
            ("connection-close", [Header("Connection", "close")]), ("cookie-junk", [Header("Cookie", string.Join("; ", Enumerable.Range(0, 500).Select(i => $"c{i}=v")))]),
        };
        foreach (var e in endpoints)
            foreach (var (name, hs) in headers)
                yield return new MalformedCase($"header/{e.Name}/{name}", HttpMethod.Post, e.Path, [JsonType, .. hs], Encoding.UTF8.GetBytes(e.Valid));
        yield return new MalformedCase("header/models/auth-100kib", HttpMethod.Get, "/v1/models", [Header("Authorization", "Bearer " + new string('k', 100 << 10))], []);
        yield return new MalformedCase("header/health/auth-garbage", HttpMethod.Get, "/health", [Header("Authorization", "%%%%")], []);
    }

    private static IEnumerable<MalformedCase> Semantic(Endpoint[] endpoints)
    {
        foreach (var e in endpoints)
        {
            var values = new (string Name, (string, string?)[] Changes)[]
            {
                ("model-empty", [("model", "\"\"")]), ("model-unknown", [("model", "\"gpt-4o\"")]), ("model-path", [("model", "\"../../etc/passwd\"")]),
                ("model-10k", [("model", Quote(new string('m', 10_000)))]), ("model-case", [("model", Quote(DefaultModel.ToUpperInvariant()))]),
                ("max-tokens-beyond-context", [("max_tokens", "1000000000")]), ("stream-and-n2", [("stream", "true"), ("n", "2")]),
                ("stream-with-bad-field", [("stream", "true"), ("temperature", "\"hot\"")]), ("stream-with-unknown-model", [("stream", "true"), ("model", "\"nope\"")]),
                ("echo-logprobs", [("echo", "true"), ("logprobs", "5")]), ("best-of-with-stream", [("best_of", "3"), ("stream", "true")]),
                ("seed-int64-max", [("seed", "9223372036854775807")]), ("top-p-tiny", [("temperature", "0"), ("top_p", "1e-9")]),
                ("unknown-fields", [("foo", "{\"bar\":[1,2,{\"baz\":null}]}"), ("__proto__", "{\"polluted\":true}"), ("constructor", "1")]),
                ("stop-equals-everything", [("stop", "[\" \",\"e\",\"a\",\"\\n\"]")]), ("max-tokens-one", [("max_tokens", "1")]),
                ("function-call-legacy", [("functions", "[{\"name\":\"f\"}]"), ("function_call", "\"auto\"")]),
            };
            foreach (var (name, changes) in values)
                yield return Post($"semantic/{e.Name}/{name}", e, e.Body(changes));
        }
    }

    /// <summary>Seeded random mutations of the valid bodies: byte flips, inserts, deletions, duplications, splices.</summary>
    private static IEnumerable<MalformedCase> Mutants(Endpoint[] endpoints, Random random, int count)
    {
        string[] splices = ["null", "NaN", "\"\\ud800\"", "[[[[", "}", "\"", "\\", "1e999", "-", ",", ":", "\u0000", "🙂", "\u202E", "{\"a\":"];
        for (int i = 0; i < count; i++)
        {
            var e = endpoints[random.Next(endpoints.Length)];
            var body = Encoding.UTF8.GetBytes(e.Valid).ToList();
            var kinds = new List<string>();
            for (int k = random.Next(1, 4); k > 0; k--)
            {
                int at = random.Next(body.Count + 1);
                switch (random.Next(5))
                {
                    case 0 when body.Count > 0:
                        body[Math.Min(at, body.Count - 1)] ^= (byte)(1 << random.Next(8));
                        kinds.Add("flip");
                        break;
                    case 1:
                        body.Insert(at, (byte)random.Next(256));
                        kinds.Add("insert");
                        break;
                    case 2 when body.Count > 1:
                        int start = Math.Min(at, body.Count - 1);
                        body.RemoveRange(start, random.Next(1, Math.Min(16, body.Count - start) + 1));
                        kinds.Add("delete");
                        break;
                    case 3 when body.Count > 0:
                        int from = random.Next(body.Count);
                        body.InsertRange(at, body.GetRange(from, Math.Min(random.Next(1, 32), body.Count - from)));
                        kinds.Add("duplicate");
                        break;
                    default:
                        body.InsertRange(at, Encoding.UTF8.GetBytes(splices[random.Next(splices.Length)]));
                        kinds.Add("splice");
                        break;
                }
            }
            yield return Post($"mutant/{e.Name}/{i:D3}-{string.Join("-", kinds)}", e, body.ToArray());
        }
    }
}

using System.Text.Json;

namespace Fiddler.Tests.Serving;

/// <summary>A generation request the fake server accepted.</summary>
public sealed record FakeRequest(string Model, int MaxTokens, bool Stream, int PromptWords);

public sealed record FakeRequestError(string Message, string? Param);

/// <summary>
/// The fake server's request validation: strict OpenAI shapes, every problem a 400 naming the parameter. It need not
/// match <c>fiddler serve</c> rule for rule; it has to turn every hostile body into a client error, never a crash.
/// </summary>
public static class FakeRequestParser
{
    public const int MaxTokensLimit = 4096;
    public const int MaxPromptChars = 200_000;
    public const int VocabSize = 32_000;
    private static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant", "tool"];

    public static (FakeRequest? Request, FakeRequestError? Error) Parse(byte[] body, bool chat, bool throwOnBadJson = false)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(body); }
        catch (JsonException e) when (!throwOnBadJson) { return (null, new FakeRequestError($"the body is not valid JSON: {e.Message}", null)); }
        using (doc)
        {
            try { return (Validate(doc.RootElement, chat), null); }
            catch (BadField e) { return (null, new FakeRequestError(e.Message, e.Param)); }
            // GetString on a lone escaped surrogate (\ud800) and the like.
            catch (InvalidOperationException e) { return (null, new FakeRequestError($"invalid text: {e.Message}", null)); }
        }
    }

    private sealed class BadField(string param, string message) : Exception(message)
    {
        public string Param { get; } = param;
    }

    private static FakeRequest Validate(JsonElement root, bool chat)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new BadField("", "the body must be a JSON object");
        string model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : throw new BadField("model", "model must be a string");
        int promptChars = chat ? Messages(root) : Prompt(root);
        if (promptChars > MaxPromptChars) throw new BadField(chat ? "messages" : "prompt", $"the prompt is longer than the context ({promptChars} characters)");
        int maxTokens = 16;
        foreach (string name in new[] { "max_tokens", "max_completion_tokens" })
            if (Optional(root, name) is { } v)
                maxTokens = v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int t) && t is >= 1 and <= MaxTokensLimit ? t
                    : throw new BadField(name, $"{name} must be an integer in [1, {MaxTokensLimit}]");
        Number(root, "temperature", 0, 2);
        Number(root, "top_p", double.Epsilon, 1);
        Number(root, "presence_penalty", -2, 2);
        Number(root, "frequency_penalty", -2, 2);
        if (Optional(root, "n") is { } n && !(n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out int count) && count == 1))
            throw new BadField("n", "n must be 1");
        if (Optional(root, "seed") is { } seed && !(seed.ValueKind == JsonValueKind.Number && seed.TryGetInt64(out _)))
            throw new BadField("seed", "seed must be an integer");
        bool stream = Optional(root, "stream") is { } s && (s.ValueKind is JsonValueKind.True or JsonValueKind.False ? s.GetBoolean() : throw new BadField("stream", "stream must be a boolean"));
        if (Optional(root, "stop") is { } stop)
        {
            bool ok = stop.ValueKind == JsonValueKind.String
                || (stop.ValueKind == JsonValueKind.Array && stop.GetArrayLength() <= 4 && stop.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String && x.GetString()!.Length > 0));
            if (!ok) throw new BadField("stop", "stop must be a string or up to 4 non-empty strings");
        }
        if (Optional(root, "logprobs") is { } lp)
        {
            bool ok = chat ? lp.ValueKind is JsonValueKind.True or JsonValueKind.False
                : lp.ValueKind == JsonValueKind.Number && lp.TryGetInt32(out int k) && k is >= 0 and <= 5;
            if (!ok) throw new BadField("logprobs", chat ? "logprobs must be a boolean" : "logprobs must be an integer in [0, 5]");
        }
        return new FakeRequest(model, maxTokens, stream, Math.Max(1, promptChars / 4));
    }

    private static JsonElement? Optional(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static void Number(JsonElement root, string name, double min, double max)
    {
        if (Optional(root, name) is { } v && !(v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double x) && double.IsFinite(x) && x >= min && x <= max))
            throw new BadField(name, $"{name} must be a number in [{min}, {max}]");
    }

    private static int Messages(JsonElement root)
    {
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new BadField("messages", "messages must be a non-empty array");
        int chars = 0;
        foreach (var message in messages.EnumerateArray())
        {
            if (message.ValueKind != JsonValueKind.Object) throw new BadField("messages", "each message must be an object");
            string? role = message.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString() : null;
            if (role is null || !Roles.Contains(role)) throw new BadField("messages", $"unknown role '{role}'");
            if (!message.TryGetProperty("content", out var content)) throw new BadField("messages", "a message needs content");
            chars += content.ValueKind switch
            {
                JsonValueKind.String => content.GetString()!.Length,
                JsonValueKind.Null when role == "assistant" => 0,
                JsonValueKind.Array => content.EnumerateArray().Sum(TextPart),
                _ => throw new BadField("messages", "content must be a string or an array of text parts"),
            };
        }
        return chars;
    }

    private static int TextPart(JsonElement part) =>
        part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var t) && t.ValueEquals("text")
            && part.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String
            ? text.GetString()!.Length
            : throw new BadField("messages", "only {\"type\": \"text\", \"text\": ...} content parts are supported");

    private static int Prompt(JsonElement root)
    {
        if (!root.TryGetProperty("prompt", out var prompt)) throw new BadField("prompt", "prompt is required");
        if (prompt.ValueKind == JsonValueKind.String) return prompt.GetString()!.Length;
        if (prompt.ValueKind != JsonValueKind.Array || prompt.GetArrayLength() == 0) throw new BadField("prompt", "prompt must be a string, strings or token ids");
        int chars = 0;
        foreach (var item in prompt.EnumerateArray())
            chars += item.ValueKind switch
            {
                JsonValueKind.String => item.GetString()!.Length,
                JsonValueKind.Number when item.TryGetInt32(out int id) && id is >= 0 and < VocabSize => 4,
                JsonValueKind.Array when item.GetArrayLength() > 0 && item.EnumerateArray().All(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int t) && t is >= 0 and < VocabSize) => 4 * item.GetArrayLength(),
                _ => throw new BadField("prompt", "prompt items must be strings or token ids in the vocabulary"),
            };
        return chars;
    }
}

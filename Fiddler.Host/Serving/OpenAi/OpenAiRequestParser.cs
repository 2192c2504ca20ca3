using System.Text;
using System.Text.Json;

namespace Fiddler.Host.Serving.OpenAi;

/// <summary>
/// OpenAI request bodies → <see cref="OpenAiRequest"/>. Every type or range problem is a <see cref="RequestException"/>
/// naming the parameter (HTTP 400), worded like OpenAI's own messages. JSON null means "not given", as in OpenAI's API;
/// unknown fields are ignored, as OpenAI does; known fields this engine cannot honour are refused rather than ignored.
/// </summary>
public static partial class OpenAiRequestParser
{
    public const int MaxStopStrings = 4;
    public const int MaxChatTopLogprobs = 20;
    public const int MaxCompletionLogprobs = 5;

    public static OpenAiRequest Parse(JsonElement root, OpenAiEndpoint endpoint)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new RequestException($"the request body must be a JSON object, got {Kind(root)}");
        string model = String(root, "model") ?? throw new RequestException("you must provide a model parameter", "model");

        RefuseUnsupported(root, endpoint);
        int? n = Integer(root, "n", 1, int.MaxValue);
        if (n is > 1) throw new RequestException($"n = {n} is not supported: this server returns one choice per request (n must be 1)", "n");

        bool stream = Bool(root, "stream") ?? false;
        bool includeUsage = false;
        if (Get(root, "stream_options") is { } so)
        {
            if (!stream) throw new RequestException("the 'stream_options' parameter is only allowed when 'stream' is enabled", "stream_options");
            if (so.ValueKind != JsonValueKind.Object) throw TypeError("stream_options", "an object", so);
            includeUsage = Bool(so, "include_usage", "stream_options.include_usage") ?? false;
        }

        var request = new OpenAiRequest
        {
            Endpoint = endpoint,
            Model = model,
            MaxTokens = Integer(root, "max_completion_tokens", 1, int.MaxValue) ?? Integer(root, "max_tokens", 1, int.MaxValue),
            Temperature = Number(root, "temperature", 0, 2) ?? 1,
            TopP = Number(root, "top_p", 0, 1, minExclusive: true) ?? 1,
            TopK = Integer(root, "top_k", -1, int.MaxValue) is int k and > 0 ? k : 0, // -1 and 0 both disable (vLLM)
            Stop = Stop(root),
            IgnoreEos = Bool(root, "ignore_eos") ?? false,
            Seed = Long(root, "seed"),
            Stream = stream,
            IncludeUsage = includeUsage,
        };
        return endpoint == OpenAiEndpoint.Chat ? ParseChat(root, request) : ParseCompletion(root, request);
    }

    private static OpenAiRequest ParseChat(JsonElement root, OpenAiRequest request)
    {
        bool logprobs = Bool(root, "logprobs") ?? false;
        int? top = Integer(root, "top_logprobs", 0, MaxChatTopLogprobs);
        if (top is not null && !logprobs)
            throw new RequestException("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        return request with { Messages = Messages(root), Logprobs = logprobs, TopLogprobs = top ?? 0 };
    }

    private static OpenAiRequest ParseCompletion(JsonElement root, OpenAiRequest request)
    {
        int? logprobs = Integer(root, "logprobs", 0, MaxCompletionLogprobs);
        var prompt = Get(root, "prompt") ?? throw new RequestException("you must provide a prompt parameter", "prompt");
        request = request with { Logprobs = logprobs is not null, TopLogprobs = logprobs ?? 0 };
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                return request with { PromptText = Text(prompt, "prompt") };
            case JsonValueKind.Array:
                var items = prompt.EnumerateArray().ToList();
                if (items.Count == 0) throw new RequestException("'prompt' is an empty array", "prompt");
                if (items.All(i => i.ValueKind == JsonValueKind.String))
                {
                    if (items.Count > 1) throw new RequestException("only one prompt per request is supported ('prompt' has several strings)", "prompt");
                    return request with { PromptText = Text(items[0], "prompt") };
                }
                if (items.All(i => i.ValueKind == JsonValueKind.Number)) return request with { PromptIds = Ids(items) };
                if (items.All(i => i.ValueKind == JsonValueKind.Array))
                {
                    if (items.Count > 1) throw new RequestException("only one prompt per request is supported ('prompt' has several token arrays)", "prompt");
                    var ids = items[0].EnumerateArray().ToList();
                    if (ids.Any(i => i.ValueKind != JsonValueKind.Number))
                        throw new RequestException("'prompt' must be a string, an array of strings, an array of token ids or an array of token-id arrays", "prompt");
                    return request with { PromptIds = Ids(ids) };
                }
                throw new RequestException("'prompt' must be a string, an array of strings, an array of token ids or an array of token-id arrays", "prompt");
            default:
                throw TypeError("prompt", "a string or an array", prompt);
        }
    }

    private static int[] Ids(List<JsonElement> items)
    {
        var ids = new int[items.Count];
        for (int i = 0; i < ids.Length; i++)
            if (!items[i].TryGetInt32(out ids[i]) || ids[i] < 0)
                throw new RequestException($"'prompt' item {i} ({items[i].GetRawText()}) is not a valid token id (a non-negative integer)", "prompt");
        return ids;
    }

    private static List<ChatMessage> Messages(JsonElement root)
    {
        var messages = Get(root, "messages") ?? throw new RequestException("you must provide a messages parameter", "messages");
        if (messages.ValueKind != JsonValueKind.Array) throw TypeError("messages", "an array", messages);
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw TypeError(at, "an object", m);
            string role = String(m, "role", $"{at}.role") ?? throw new RequestException($"missing required parameter: '{at}.role'", $"{at}.role");
            // Tools are not served ('tools' is refused): a conversation carrying tool calls or their results would be
            // rendered without them, as empty turns, so it is refused as plainly.
            if (Get(m, "tool_calls") is { ValueKind: not JsonValueKind.Null } || Get(m, "function_call") is { ValueKind: not JsonValueKind.Null })
                throw new RequestException($"'{at}' carries tool calls: this server does not support tools", $"{at}.tool_calls");
            if (role is "tool" or "function")
                throw new RequestException($"'{at}' has role '{role}': this server does not support tools", $"{at}.role");
            list.Add(new ChatMessage(role, Content(m, $"{at}.content")));
        }
        if (list.Count == 0) throw new RequestException("'messages' must contain at least one message", "messages");
        return list;
    }

    /// <summary>A string, or text parts joined with newlines (as vLLM does); null (e.g. an assistant tool call) is empty text.</summary>
    private static string Content(JsonElement message, string param)
    {
        if (Get(message, "content") is not { } content) return "";
        if (content.ValueKind == JsonValueKind.String) return Text(content, param);
        if (content.ValueKind != JsonValueKind.Array) throw TypeError(param, "a string or an array of content parts", content);
        var text = new StringBuilder();
        int i = 0;
        foreach (var part in content.EnumerateArray())
        {
            string at = $"{param}[{i++}]";
            if (part.ValueKind != JsonValueKind.Object) throw TypeError(at, "an object", part);
            string type = String(part, "type", $"{at}.type") ?? throw new RequestException($"missing required parameter: '{at}.type'", $"{at}.type");
            if (type != "text") throw new RequestException($"content parts of type '{type}' are not supported: this model reads text only", $"{at}.type");
            if (text.Length > 0) text.Append('\n');
            text.Append(String(part, "text", $"{at}.text") ?? throw new RequestException($"missing required parameter: '{at}.text'", $"{at}.text"));
        }
        return text.ToString();
    }

    private static IReadOnlyList<string> Stop(JsonElement root)
    {
        if (Get(root, "stop") is not { } stop) return [];
        List<string> list;
        if (stop.ValueKind == JsonValueKind.String) list = [Text(stop, "stop")];
        else if (stop.ValueKind == JsonValueKind.Array)
        {
            list = [.. stop.EnumerateArray().Select((s, i) => s.ValueKind == JsonValueKind.String ? Text(s, "stop") : throw TypeError($"stop[{i}]", "a string", s))];
            if (list.Count > MaxStopStrings)
                throw new RequestException($"'stop' has {list.Count} sequences: at most {MaxStopStrings} are allowed", "stop");
        }
        else throw TypeError("stop", "a string or an array of strings", stop);
        if (list.Any(s => s.Length == 0)) throw new RequestException("'stop' sequences must not be empty strings", "stop");
        return list;
    }

    private static void RefuseUnsupported(JsonElement root, OpenAiEndpoint endpoint)
    {
        foreach (string penalty in (string[])["presence_penalty", "frequency_penalty"])
            if (Number(root, penalty, -2, 2) is float p && p != 0)
                throw new RequestException($"'{penalty}' is not supported by this server: only 0 is accepted", penalty);
        // vLLM's sampling extras: refused unless they ask for nothing (min_p 0, repetition_penalty 1), as the penalties above.
        if (Number(root, "min_p", 0, 1) is float minP && minP != 0)
            throw new RequestException("'min_p' is not supported by this server: only 0 is accepted", "min_p");
        if (Number(root, "repetition_penalty", 0, 100, minExclusive: true) is float rep && rep != 1)
            throw new RequestException("'repetition_penalty' is not supported by this server: only 1 is accepted", "repetition_penalty");
        if (Get(root, "logit_bias") is { } bias && (bias.ValueKind != JsonValueKind.Object || bias.EnumerateObject().Any()))
            throw new RequestException("'logit_bias' is not supported by this server", "logit_bias");
        foreach (string tools in (string[])["tools", "functions"])
            if (Get(root, tools) is { } t && (t.ValueKind != JsonValueKind.Array || t.GetArrayLength() > 0))
                throw new RequestException($"'{tools}' (function calling) is not supported by this server", tools);
        if (Get(root, "response_format") is { } format
            && !(format.ValueKind == JsonValueKind.Object && String(format, "type", "response_format.type") is null or "text"))
            throw new RequestException("only response_format {\"type\": \"text\"} is supported by this server", "response_format");
        if (endpoint != OpenAiEndpoint.Completion) return;
        if (Bool(root, "echo") == true) throw new RequestException("'echo' is not supported by this server", "echo");
        if (String(root, "suffix") is { Length: > 0 }) throw new RequestException("'suffix' is not supported by this server", "suffix");
        if (Integer(root, "best_of", 1, int.MaxValue) is > 1) throw new RequestException("'best_of' must be 1 on this server", "best_of");
    }
}

using System.Text.Json;
using System.Text.Json.Nodes;
using Fiddler.Kernels.Text.ChatTemplates;

namespace Fiddler.Kernels.Text;

/// <summary>
/// A Hugging Face chat template (the Jinja2 <c>chat_template</c> of tokenizer_config.json), rendered the way
/// transformers' <c>apply_chat_template</c> does: a sandboxed jinja2 environment with trim_blocks and
/// lstrip_blocks, the globals <c>raise_exception</c> and <c>strftime_now</c>, transformers' <c>tojson</c>, and the
/// variables <c>messages</c>, <c>add_generation_prompt</c>, <c>tools</c>/<c>documents</c> (none) and the special
/// tokens. The interpreter covers the Jinja2 subset real chat templates use; a template needing more fails when
/// it is parsed, with <see cref="NotSupportedException"/> naming the construct and its line and column.
/// </summary>
public sealed class ChatTemplate
{
    private static readonly (string Role, string Content)[][] TrialConversations =
    [
        [("user", "Hello")],
        [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi."), ("user", "Bye")],
        [("user", "Hello"), ("assistant", "Hi.")],
    ];

    private readonly IReadOnlyList<Node> _body;
    private readonly string _source;
    private readonly IReadOnlyDictionary<string, object?> _specialTokens;

    private ChatTemplate(IReadOnlyList<Node> body, string source, string name, IReadOnlyDictionary<string, object?> specialTokens)
    {
        _body = body;
        _source = source;
        Name = name;
        _specialTokens = specialTokens;
    }

    /// <summary>A short description: the recognised family ("mistral-instruct", "chatml", "llama-2", "llama-3",
    /// "gemma", "zephyr", "phi-3") or "custom", followed by the template's name when it is not "default".</summary>
    public string Name { get; }

    /// <summary>
    /// Loads the chat template of a model directory (tokenizer_config.json's <c>chat_template</c>, else
    /// chat_template.jinja / chat_template.json) with its bos/eos and other special tokens; null when there is none.
    /// </summary>
    public static ChatTemplate? FromTokenizerConfig(string modelDir)
    {
        TokenizerConfigInfo info;
        try
        {
            info = TokenizerConfigInfo.Load(modelDir);
        }
        catch (TokenizerLoadException ex)
        {
            throw new InvalidDataException(ex.Message, ex);
        }
        if (info.ChatTemplate is null)
        {
            return null;
        }
        var tokens = ReadSpecialTokens(Path.Combine(modelDir, "tokenizer_config.json"));
        tokens["bos_token"] = info.BosToken;
        tokens["eos_token"] = info.EosToken;
        return Create(info.ChatTemplate, tokens, "default");
    }

    /// <summary>Parses <paramref name="source"/> and checks it with trial renders; throws
    /// <see cref="NotSupportedException"/> or <see cref="InvalidDataException"/> when it cannot be used.</summary>
    public static ChatTemplate Parse(string source, string? bosToken, string? eosToken, string name = "default") =>
        Create(source, new Dictionary<string, object?> { ["bos_token"] = bosToken, ["eos_token"] = eosToken }, name);

    /// <summary>Renders the conversation; <see cref="ArgumentException"/> carries the template's own message
    /// (raise_exception) or the render error when the conversation is rejected.</summary>
    public string Apply(IReadOnlyList<(string Role, string Content)> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        try
        {
            return Render(messages, addGenerationPrompt);
        }
        catch (JinjaRenderException ex)
        {
            throw new ArgumentException(ex.Message, nameof(messages), ex);
        }
        catch (Exception ex) when (ex is InvalidCastException or IndexOutOfRangeException or ArgumentOutOfRangeException or FormatException)
        {
            throw new ArgumentException($"chat template '{Name}' failed to render: {ex.Message}", nameof(messages), ex);
        }
    }

    private string Render(IReadOnlyList<(string Role, string Content)> messages, bool addGenerationPrompt)
    {
        var vars = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in _specialTokens)
        {
            if (v is not null)
            {
                vars[k] = v;
            }
        }
        vars["messages"] = messages
            .Select(m => (object?)new JinjaDict { ["role"] = m.Role, ["content"] = m.Content })
            .ToList();
        vars["add_generation_prompt"] = addGenerationPrompt;
        // transformers passes these even when the caller gives none.
        vars["tools"] = null;
        vars["documents"] = null;
        return JinjaRenderer.Render(_body, _source, vars);
    }

    private static ChatTemplate Create(string source, Dictionary<string, object?> specialTokens, string name)
    {
        ArgumentNullException.ThrowIfNull(source);
        var body = JinjaParser.Parse(source, out string normalized);
        string family = Recognise(source);
        var template = new ChatTemplate(body, normalized, name == "default" ? family : $"{family} ({name})", specialTokens);
        foreach (var conversation in TrialConversations)
        {
            foreach (bool prompt in new[] { true, false })
            {
                try
                {
                    template.Render(conversation, prompt);
                }
                catch (JinjaRenderException)
                {
                    // The template may legitimately reject a trial conversation (e.g. no system role).
                }
            }
        }
        return template;
    }

    private static string Recognise(string s)
    {
        bool Has(string marker) => s.Contains(marker, StringComparison.Ordinal);
        return true switch
        {
            _ when Has("<<SYS>>") && Has("[INST]") => "llama-2",
            _ when Has("[INST]") => "mistral-instruct",
            _ when Has("<|im_start|>") => "chatml",
            _ when Has("<start_of_turn>") => "gemma",
            _ when Has("<|start_header_id|>") => "llama-3",
            _ when Has("<|user|>") && Has("<|end|>") => "phi-3",
            _ when Has("<|user|>") && Has("<|assistant|>") => "zephyr",
            _ => "custom",
        };
    }

    /// <summary>The special tokens transformers adds to the render variables (its special_tokens_map).</summary>
    private static Dictionary<string, object?> ReadSpecialTokens(string configPath)
    {
        var tokens = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (!File.Exists(configPath))
        {
            return tokens;
        }
        JsonObject? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject;
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{configPath}: not valid JSON: {ex.Message}", ex);
        }
        if (root is null)
        {
            return tokens;
        }
        foreach (string key in new[] { "unk_token", "sep_token", "pad_token", "cls_token", "mask_token" })
        {
            if (TokenText(root[key]) is { } text)
            {
                tokens[key] = text;
            }
        }
        if (root["additional_special_tokens"] is JsonArray extra)
        {
            tokens["additional_special_tokens"] = extra.Select(TokenText).Where(t => t is not null).Select(t => (object?)t).ToList();
        }
        return tokens;
    }

    private static string? TokenText(JsonNode? node) => node?.GetValueKind() switch
    {
        JsonValueKind.String => node.GetValue<string>(),
        JsonValueKind.Object when node["content"]?.GetValueKind() == JsonValueKind.String => node["content"]!.GetValue<string>(),
        _ => null,
    };
}

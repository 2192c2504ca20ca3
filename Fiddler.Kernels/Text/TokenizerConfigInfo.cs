using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Fiddler.Kernels.Text;

/// <summary>The fields of <c>tokenizer_config.json</c> (and chat template files) that <see cref="HfTokenizer"/> uses.</summary>
internal sealed record TokenizerConfigInfo(
    string? TokenizerClass,
    string? BosToken,
    string? EosToken,
    bool? AddBosToken,
    bool? AddEosToken,
    bool CleanUpTokenizationSpaces,
    string? ChatTemplate)
{
    public static readonly TokenizerConfigInfo Empty = new(null, null, null, null, null, false, null);

    /// <summary>Reads <c>tokenizer_config.json</c>, <c>chat_template.jinja</c> and <c>chat_template.json</c>
    /// from <paramref name="dir"/>; each is optional.</summary>
    public static TokenizerConfigInfo Load(string dir)
    {
        var info = Empty;
        string configPath = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(configPath))
        {
            info = Parse(configPath, HfTokenizer.ReadFile(configPath));
        }

        // special_tokens_map.json names the special tokens too (older checkpoints keep them only there): it fills what the
        // config leaves out.
        string mapPath = Path.Combine(dir, "special_tokens_map.json");
        if ((info.BosToken is null || info.EosToken is null) && File.Exists(mapPath))
        {
            var map = HfTokenizer.ParseObject(mapPath, StripBom(HfTokenizer.ReadFile(mapPath)), "special_tokens_map.json");
            info = info with { BosToken = info.BosToken ?? ReadToken(mapPath, map, "bos_token"), EosToken = info.EosToken ?? ReadToken(mapPath, map, "eos_token") };
        }

        // As transformers: a chat template file beside the config overrides the config's own template (checkpoints
        // re-saved by recent transformers keep it only there; an updated template is often shipped that way).
        {
            string jinjaPath = Path.Combine(dir, "chat_template.jinja");
            string jsonPath = Path.Combine(dir, "chat_template.json");
            if (File.Exists(jinjaPath))
            {
                info = info with { ChatTemplate = DecodeUtf8(jinjaPath, HfTokenizer.ReadFile(jinjaPath)) };
            }
            else if (File.Exists(jsonPath))
            {
                var root = HfTokenizer.ParseObject(jsonPath, StripBom(HfTokenizer.ReadFile(jsonPath)), "chat_template.json");
                info = info with { ChatTemplate = ReadChatTemplate(jsonPath, root["chat_template"]) };
            }
        }
        return info;
    }

    internal static TokenizerConfigInfo Parse(string path, byte[] bytes)
    {
        var root = HfTokenizer.ParseObject(path, StripBom(bytes), "tokenizer_config.json");
        return new TokenizerConfigInfo(
            TokenizerClass: ReadString(path, root, "tokenizer_class"),
            BosToken: ReadToken(path, root, "bos_token"),
            EosToken: ReadToken(path, root, "eos_token"),
            AddBosToken: ReadBool(path, root, "add_bos_token"),
            AddEosToken: ReadBool(path, root, "add_eos_token"),
            CleanUpTokenizationSpaces: ReadBool(path, root, "clean_up_tokenization_spaces") ?? false,
            ChatTemplate: ReadChatTemplate(path, root["chat_template"]));
    }

    private static ReadOnlyMemory<byte> StripBom(byte[] bytes) =>
        bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? bytes.AsMemory(3) : bytes;

    private static string DecodeUtf8(string path, byte[] bytes)
    {
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(StripBom(bytes).Span);
        }
        catch (DecoderFallbackException ex)
        {
            throw new TokenizerLoadException(path, $"file is not valid UTF-8: {ex.Message}", ex);
        }
    }

    private static string? ReadString(string path, JsonObject root, string key)
    {
        var node = root[key];
        return node?.GetValueKind() switch
        {
            null or JsonValueKind.Null => null,
            JsonValueKind.String => node.GetValue<string>(),
            var k => throw new TokenizerLoadException(path, $"\"{key}\" must be a string, not {k}"),
        };
    }

    private static bool? ReadBool(string path, JsonObject root, string key)
    {
        var node = root[key];
        return node?.GetValueKind() switch
        {
            null or JsonValueKind.Null => null,
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            var k => throw new TokenizerLoadException(path, $"\"{key}\" must be true or false, not {k}"),
        };
    }

    /// <summary>A special token: <c>"&lt;s&gt;"</c> or <c>{"content": "&lt;s&gt;", ...}</c> (AddedToken form).</summary>
    private static string? ReadToken(string path, JsonObject root, string key)
    {
        var node = root[key];
        switch (node?.GetValueKind())
        {
            case null or JsonValueKind.Null:
                return null;
            case JsonValueKind.String:
                return node.GetValue<string>();
            case JsonValueKind.Object when node["content"] is { } c && c.GetValueKind() == JsonValueKind.String:
                return c.GetValue<string>();
            default:
                throw new TokenizerLoadException(path, $"\"{key}\" must be a string or an object with a string \"content\"");
        }
    }

    /// <summary><c>chat_template</c>: a string, or a list of <c>{"name", "template"}</c> (the "default" one, else the first).</summary>
    private static string? ReadChatTemplate(string path, JsonNode? node)
    {
        switch (node?.GetValueKind())
        {
            case null or JsonValueKind.Null:
                return null;
            case JsonValueKind.String:
                return node.GetValue<string>();
            case JsonValueKind.Array:
                string? first = null;
                foreach (var entry in node.AsArray())
                {
                    if (entry is not JsonObject o || o["template"]?.GetValueKind() != JsonValueKind.String)
                    {
                        throw new TokenizerLoadException(path, "chat_template list entries must be objects with a string \"template\"");
                    }
                    string template = o["template"]!.GetValue<string>();
                    first ??= template;
                    if (o["name"]?.GetValueKind() == JsonValueKind.String && o["name"]!.GetValue<string>() == "default")
                    {
                        return template;
                    }
                }
                return first;
            default:
                throw new TokenizerLoadException(path, "chat_template must be a string or a list of named templates");
        }
    }
}

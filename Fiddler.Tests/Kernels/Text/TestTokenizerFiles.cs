using System.Text.Json;
using System.Text.Json.Nodes;

namespace Fiddler.Tests.Kernels.Text;

/// <summary>
/// Writes a tiny Mistral-style tokenizer.json (BPE with byte fallback, SentencePiece "▁" normalizer/decoder,
/// TemplateProcessing post-processor adding &lt;s&gt;) in the Hugging Face format, into a fresh temp directory.
/// </summary>
internal sealed class TestTokenizerFiles : IDisposable
{
    public const int Unk = 0, Bos = 1, Eos = 2;
    public const int Space = 259;      // "▁"
    public const int Hello = 271;      // "▁hello"
    public const int World = 276;      // "▁world"
    public const int Bang = 277;       // "!"
    public const int VocabSize = 278;

    public static int ByteId(byte b) => 3 + b;

    private static readonly string[] Pieces =
    [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "llo", "ello", "▁hello",
        "▁w", "or", "▁wor", "ld", "▁world", "!",
    ];

    private static readonly string[] Merges =
    [
        "▁ h", "l l", "ll o", "e llo", "▁h ello", "▁ w", "o r", "▁w or", "l d", "▁wor ld",
    ];

    public TestTokenizerFiles()
    {
        Dir = Path.Combine(Path.GetTempPath(), "fiddler-tok-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Dir);
    }

    public string Dir { get; }

    public string TokenizerJsonPath => Path.Combine(Dir, "tokenizer.json");

    public static JsonObject BuildTokenizerJson()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++)
        {
            vocab[$"<0x{b:X2}>"] = ByteId((byte)b);
        }
        int next = 259;
        foreach (var p in Pieces)
        {
            vocab[p] = next++;
        }

        static JsonObject Added(int id, string content) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false,
            ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
        };

        return new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(Added(0, "<unk>"), Added(1, "<s>"), Added(2, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["pair"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 1 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } }),
                ["special_tokens"] = new JsonObject
                {
                    ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("<s>") },
                },
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray([.. Merges.Select(m => (JsonNode?)JsonValue.Create(m))]),
            },
        };
    }

    public static JsonObject BuildConfig(bool tokensAsObjects = false) => new()
    {
        ["add_bos_token"] = true,
        ["add_eos_token"] = false,
        ["bos_token"] = tokensAsObjects
            ? new JsonObject { ["__type"] = "AddedToken", ["content"] = "<s>", ["lstrip"] = false, ["normalized"] = true, ["rstrip"] = false, ["single_word"] = false }
            : "<s>",
        ["eos_token"] = tokensAsObjects
            ? new JsonObject { ["__type"] = "AddedToken", ["content"] = "</s>", ["lstrip"] = false, ["normalized"] = true, ["rstrip"] = false, ["single_word"] = false }
            : "</s>",
        ["unk_token"] = "<unk>",
        ["pad_token"] = null,
        ["clean_up_tokenization_spaces"] = false,
        ["legacy"] = true,
        ["tokenizer_class"] = "LlamaTokenizer",
        ["chat_template"] = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    };

    public TestTokenizerFiles WriteTokenizer(JsonObject? json = null)
    {
        File.WriteAllText(TokenizerJsonPath, (json ?? BuildTokenizerJson()).ToJsonString());
        return this;
    }

    public TestTokenizerFiles WriteConfig(JsonObject? config = null)
    {
        File.WriteAllText(Path.Combine(Dir, "tokenizer_config.json"), (config ?? BuildConfig()).ToJsonString());
        return this;
    }

    public TestTokenizerFiles WriteFile(string name, string content)
    {
        File.WriteAllText(Path.Combine(Dir, name), content);
        return this;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

using System.Text.Json.Nodes;
using Fiddler.Kernels.Text;
using Xunit;
using T = Fiddler.Tests.Kernels.Text.TestTokenizerFiles;

namespace Fiddler.Tests.Kernels.Text;

/// <summary>tokenizer.json and its config files that cannot be used: each is one <see cref="TokenizerLoadException"/>
/// naming the file, never a crash of the native library (which aborts the process on a panic).</summary>
public sealed partial class HfTokenizerTests
{
    [Fact]
    public void Constructor_MissingTokenizerJson_ThrowsNamingPath()
    {
        File.Delete(_files.TokenizerJsonPath);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
        Assert.Equal(_files.TokenizerJsonPath, ex.Path);
        Assert.IsType<FileNotFoundException>(ex.InnerException);
    }

    [Fact]
    public void Constructor_MissingDirectory_ThrowsNamingPath()
    {
        string dir = Path.Combine(_files.Dir, "nope");
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(dir));
        Assert.Contains(Path.Combine(dir, "tokenizer.json"), ex.Message);
    }

    [Theory]
    [InlineData("{ \"model\": { \"type\": \"BPE\", ")]
    [InlineData("")]
    [InlineData("not json at all")]
    [InlineData("[1, 2, 3]")]
    [InlineData("{\"version\": \"1.0\"}")]
    public void Constructor_CorruptTokenizerJson_ThrowsNamingPath(string content)
    {
        _files.WriteFile("tokenizer.json", content);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
    }

    [Theory]
    [InlineData(1, 50)]
    [InlineData(1, 1)]
    [InlineData(-1, 0)]
    public void Constructor_StripDecoderThatCanPanic_IsRefusedNotACrash(int start, int stop)
    {
        // tokenizers' Strip panics (and the native library aborts the process) on a token of only stripped characters
        // when it strips both ends; the load refuses it instead.
        var json = T.BuildTokenizerJson();
        var strip = json["decoder"]!["decoders"]!.AsArray().Last()!.AsObject();
        strip["start"] = start;
        strip["stop"] = stop;
        _files.WriteTokenizer(json);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
        Assert.Contains("decoder Strip", ex.Message);
        using var ok = new HfTokenizer(_files.WriteTokenizer().Dir); // the usual start 1, stop 0 still loads
    }

    [Fact]
    public void Constructor_NullVocabularyId_ThrowsNamingPathAndToken()
    {
        var json = T.BuildTokenizerJson();
        json["model"]!["vocab"]!["<s>"] = null;
        _files.WriteTokenizer(json);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
        Assert.Contains("'<s>' has no id", ex.Message);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(1 << 28)]
    public void Constructor_AddedTokenIdBeyondAnyVocabulary_ThrowsNamingPath(int id)
    {
        var json = T.BuildTokenizerJson();
        json["added_tokens"]!.AsArray().Add(new System.Text.Json.Nodes.JsonObject { ["id"] = id, ["content"] = "<huge>", ["special"] = true });
        _files.WriteTokenizer(json);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
        Assert.Contains($"id {id}", ex.Message);
    }

    [Fact]
    public void Constructor_TruncatedRealTokenizerJson_ThrowsNamingPath()
    {
        string full = T.BuildTokenizerJson().ToJsonString();
        _files.WriteFile("tokenizer.json", full[..(full.Length / 2)]);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains("not valid JSON", ex.Message);
    }

    [Fact]
    public void Constructor_ValidJsonRejectedByNativeLibrary_ThrowsNamingPath()
    {
        var json = T.BuildTokenizerJson();
        json["model"]!["type"] = "NoSuchModel";
        _files.WriteTokenizer(json);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
        Assert.Contains("rejected", ex.Message);
    }

    public static TheoryData<string> NativeRejectedMutations => new()
    {
        "merge-out-of-vocab", "bad-regex", "unknown-template-token", "template-seq-b-in-single", "template-ids-tokens-mismatch", "unknown-decoder", "bad-version", "vocab-gap",
    };

    [Theory]
    [MemberData(nameof(NativeRejectedMutations))]
    public void Constructor_StructurallyBrokenTokenizer_ThrowsWithoutCrashing(string mutation)
    {
        var json = T.BuildTokenizerJson();
        switch (mutation)
        {
            case "merge-out-of-vocab":
                ((JsonArray)json["model"]!["merges"]!).Add("q z");
                break;
            case "bad-regex":
                json["pre_tokenizer"] = new JsonObject
                {
                    ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = "([unclosed" },
                    ["behavior"] = "Isolated", ["invert"] = false,
                };
                break;
            case "unknown-template-token":
                json["post_processor"]!["special_tokens"] = new JsonObject();
                break;
            case "template-seq-b-in-single":
                ((JsonArray)json["post_processor"]!["single"]!).Add(
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 0 } });
                break;
            case "template-ids-tokens-mismatch":
                json["post_processor"]!["special_tokens"]!["<s>"]!["ids"] = new JsonArray(1, 1);
                break;
            case "unknown-decoder":
                json["decoder"] = new JsonObject { ["type"] = "Frobnicate" };
                break;
            case "bad-version":
                json["version"] = "9.9";
                break;
            case "vocab-gap":
                // Not an error for HF (ids need not be contiguous): must load and report VocabSize from the max id.
                ((JsonObject)json["model"]!["vocab"]!)["zz"] = 1000;
                break;
        }
        _files.WriteTokenizer(json);
        if (mutation == "vocab-gap")
        {
            using var tok = Load();
            Assert.Equal(1001, tok.VocabSize);
            return;
        }
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
    }

    [Fact]
    public void Constructor_MalformedVocabulary_ThrowsNamingPath()
    {
        var json = T.BuildTokenizerJson();
        json["model"]!["vocab"] = new JsonObject { ["a"] = "not an id" };
        _files.WriteTokenizer(json);
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(_files.TokenizerJsonPath, ex.Message);
    }

    [Fact]
    public void Constructor_CorruptConfig_ThrowsNamingConfigPath()
    {
        _files.WriteFile("tokenizer_config.json", "{ bos_token: ");
        var ex = Assert.Throws<TokenizerLoadException>(() => new HfTokenizer(_files.Dir));
        Assert.Contains(Path.Combine(_files.Dir, "tokenizer_config.json"), ex.Message);
    }
}

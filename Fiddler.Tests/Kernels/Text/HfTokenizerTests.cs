using System.Text.Json.Nodes;
using Fiddler.Kernels.Text;
using Xunit;
using T = Fiddler.Tests.Kernels.Text.TestTokenizerFiles;

namespace Fiddler.Tests.Kernels.Text;

public sealed partial class HfTokenizerTests : IDisposable
{
    private readonly T _files = new();

    public HfTokenizerTests()
    {
        _files.WriteTokenizer().WriteConfig();
    }

    public void Dispose() => _files.Dispose();

    private HfTokenizer Load() => new(_files.Dir);

    [Fact]
    public void Encode_DefaultAddsSpecialTokens_PrependsBos()
    {
        using var tok = Load();
        Assert.Equal([T.Bos, T.Hello, T.World], tok.Encode("hello world"));
    }

    [Fact]
    public void Encode_WithoutSpecialTokens_HasNoBos()
    {
        using var tok = Load();
        Assert.Equal([T.Hello, T.World, T.Bang], tok.Encode("hello world!", addSpecialTokens: false));
    }

    [Fact]
    public void Encode_UnknownCharacter_UsesByteFallback()
    {
        using var tok = Load();
        // "é" = C3 A9, preceded by the "▁" the normalizer prepends.
        Assert.Equal([T.Space, T.ByteId(0xC3), T.ByteId(0xA9)], tok.Encode("é", addSpecialTokens: false));
    }

    [Fact]
    public void Encode_SpecialTokenTextInInput_IsRecognisedEitherWay()
    {
        using var tok = Load();
        Assert.Equal([T.Bos, T.Hello], tok.Encode("<s>hello", addSpecialTokens: false));
        Assert.Equal([T.Bos, T.Bos, T.Hello], tok.Encode("<s>hello"));
    }

    [Fact]
    public void Encode_EmptyString_ReturnsOnlySpecialTokens()
    {
        using var tok = Load();
        Assert.Equal([T.Bos], tok.Encode(""));
        Assert.Empty(tok.Encode("", addSpecialTokens: false));
    }

    [Fact]
    public void Decode_SkipSpecialTokens_DropsBosAndEos()
    {
        using var tok = Load();
        Assert.Equal("hello world!", tok.Decode([T.Bos, T.Hello, T.World, T.Bang, T.Eos]));
    }

    [Fact]
    public void Decode_KeepSpecialTokens_MatchesHfDecoderChain()
    {
        using var tok = Load();
        // HF: ["<s>", "▁hello", "▁world", "</s>"] -> "<s> hello world</s>" (Strip only removes a leading space).
        Assert.Equal("<s> hello world</s>", tok.Decode([T.Bos, T.Hello, T.World, T.Eos], skipSpecialTokens: false));
    }

    [Fact]
    public void Decode_ByteFallbackTokens_ReassemblesUtf8()
    {
        using var tok = Load();
        Assert.Equal("é", tok.Decode([T.Space, T.ByteId(0xC3), T.ByteId(0xA9)]));
        Assert.Equal("\uFFFD", tok.Decode([T.ByteId(0xC3)]));
    }

    [Theory]
    [InlineData("hello world")]
    [InlineData("héllo wörld 😀 ok")]
    [InlineData("  leading and trailing  ")]
    [InlineData("line\nbreak\ttab")]
    public void EncodeDecode_RoundTrip_ReturnsOriginalText(string text)
    {
        using var tok = Load();
        Assert.Equal(text, tok.Decode(tok.Encode(text)));
    }

    [Fact]
    public void Decode_NegativeId_Throws()
    {
        using var tok = Load();
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([T.Hello, -1]));
    }

    [Fact]
    public void Decode_IdBeyondVocab_IsDroppedLikeHf()
    {
        using var tok = Load();
        Assert.Equal("hello", tok.Decode([T.Hello, 100_000]));
    }

    [Fact]
    public void Properties_FromConfig_AreExposed()
    {
        using var tok = Load();
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        Assert.Equal("<s>", tok.BosToken);
        Assert.Equal("</s>", tok.EosToken);
        Assert.Equal(T.VocabSize, tok.VocabSize);
        Assert.Equal("LlamaTokenizer", tok.TokenizerClass);
        Assert.StartsWith("{{ bos_token }}", tok.ChatTemplate);
        Assert.Equal(T.Hello, tok.TokenToId("▁hello"));
        Assert.Equal("<0x0A>", tok.IdToToken(T.ByteId(0x0A)));
        Assert.Null(tok.TokenToId("nope"));
        Assert.True(tok.IsSpecial(T.Eos));
        Assert.False(tok.IsSpecial(T.Hello));
        Assert.Equal(new HashSet<int> { 0, 1, 2 }, tok.SpecialIds);
    }

    [Fact]
    public void Constructor_TokensAsAddedTokenObjects_ResolvesIds()
    {
        _files.WriteConfig(T.BuildConfig(tokensAsObjects: true));
        using var tok = Load();
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
    }

    [Fact]
    public void Constructor_TokenizerJsonPath_LoadsConfigBesideIt()
    {
        using var tok = new HfTokenizer(_files.TokenizerJsonPath);
        Assert.Equal(2, tok.EosId);
        Assert.Equal(_files.TokenizerJsonPath, tok.TokenizerPath);
    }

    [Fact]
    public void Encode_LlamaConfigWithoutBos_FollowsConfigLikeTransformers()
    {
        var config = T.BuildConfig();
        config["add_bos_token"] = false;
        config["add_eos_token"] = true;
        _files.WriteConfig(config);
        using var tok = Load();
        Assert.Equal([T.Hello, T.Eos], tok.Encode("hello"));
    }

    [Fact]
    public void Encode_NonLlamaClass_UsesTokenizerJsonPostProcessor()
    {
        var config = T.BuildConfig();
        config["add_bos_token"] = false;
        config["tokenizer_class"] = "PreTrainedTokenizerFast";
        _files.WriteConfig(config);
        using var tok = Load();
        Assert.Equal([T.Bos, T.Hello], tok.Encode("hello"));
    }

    [Fact]
    public void Constructor_NoConfig_UsesPostProcessorAndHasNoBosId()
    {
        File.Delete(Path.Combine(_files.Dir, "tokenizer_config.json"));
        using var tok = Load();
        Assert.Equal([T.Bos, T.Hello], tok.Encode("hello"));
        Assert.Null(tok.BosId);
        Assert.Null(tok.EosId);
        Assert.Null(tok.ChatTemplate);
    }

    [Fact]
    public void Constructor_NoPostProcessor_EncodeAddsNothing()
    {
        var json = T.BuildTokenizerJson();
        json["post_processor"] = null;
        _files.WriteTokenizer(json);
        File.Delete(Path.Combine(_files.Dir, "tokenizer_config.json"));
        using var tok = Load();
        Assert.Equal([T.Hello], tok.Encode("hello"));
        Assert.Equal([T.Hello], tok.Encode("hello", addSpecialTokens: false));
    }

    [Fact]
    public void Encode_TruncationInTokenizerJson_IsIgnoredLikeTransformers()
    {
        var json = T.BuildTokenizerJson();
        json["truncation"] = new JsonObject { ["direction"] = "Right", ["max_length"] = 2, ["strategy"] = "LongestFirst", ["stride"] = 0 };
        _files.WriteTokenizer(json);
        using var tok = Load();
        Assert.Equal([T.Bos, T.Hello, T.World, T.Bang], tok.Encode("hello world!"));
    }

    [Fact]
    public void ChatTemplate_NamedTemplateList_PicksDefault()
    {
        var config = T.BuildConfig();
        config["chat_template"] = new JsonArray(
            new JsonObject { ["name"] = "tool_use", ["template"] = "TOOLS" },
            new JsonObject { ["name"] = "default", ["template"] = "DEFAULT" });
        _files.WriteConfig(config);
        using var tok = Load();
        Assert.Equal("DEFAULT", tok.ChatTemplate);
    }

    [Fact]
    public void ChatTemplate_JinjaFile_UsedWhenConfigHasNone()
    {
        var config = T.BuildConfig();
        config.Remove("chat_template");
        _files.WriteConfig(config).WriteFile("chat_template.jinja", "{{ messages }}");
        using var tok = Load();
        Assert.Equal("{{ messages }}", tok.ChatTemplate);
    }

    [Fact]
    public void ChatTemplate_JinjaFile_OverridesTheConfigsTemplate()
    {
        var config = T.BuildConfig();
        config["chat_template"] = "FROM CONFIG";
        _files.WriteConfig(config).WriteFile("chat_template.jinja", "FROM FILE");
        using var tok = Load();
        Assert.Equal("FROM FILE", tok.ChatTemplate); // transformers' test_chat_template_file_priority
    }

    [Fact]
    public void SpecialTokens_OnlyInSpecialTokensMap_AreFound()
    {
        var config = T.BuildConfig();
        config.Remove("bos_token");
        config.Remove("eos_token");
        _files.WriteConfig(config).WriteFile("special_tokens_map.json",
            """{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "unk_token": "<unk>"}""");
        using var tok = Load();
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
    }

    [Fact]
    public void Decode_CleanUpTokenizationSpacesTrue_AppliesTransformersCleanup()
    {
        var config = T.BuildConfig();
        config["clean_up_tokenization_spaces"] = true;
        _files.WriteConfig(config);
        using var tok = Load();
        Assert.Equal("hello!", tok.Decode([T.Hello, T.Space, T.Bang]));
        Assert.Equal("a,b", HfTokenizer.CleanUpTokenization("a ,b"));
    }

    [Fact]
    public void Encode_AfterDispose_Throws()
    {
        var tok = Load();
        tok.Dispose();
        tok.Dispose();
        Assert.Throws<ObjectDisposedException>(() => tok.Encode("hello"));
    }

    [Fact]
    public void Encode_ConcurrentCalls_AreConsistent()
    {
        using var tok = Load();
        var results = new int[64][];
        Parallel.For(0, results.Length, i => results[i] = tok.Encode("hello world! héllo"));
        foreach (var r in results)
        {
            Assert.Equal(results[0], r);
        }
    }
}

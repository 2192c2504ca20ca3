using System.Text;
using Fiddler.Kernels.Text;
using Xunit;
using T = Fiddler.Tests.Kernels.Text.TestTokenizerFiles;

namespace Fiddler.Tests.Kernels.Text;

public sealed class StreamingDecoderTests
{
    /// <summary>A Mistral-like decoder over a synthetic vocabulary: "▁" is a space, "&lt;0xNN&gt;" is a byte,
    /// invalid UTF-8 becomes U+FFFD, one leading space is stripped, id 0 is a special token (skipped).</summary>
    private static readonly string[] Vocab =
    [
        "</s>", "▁Hello", "▁world", "!", "▁", "<0xE2>", "<0x82>", "<0xAC>", "▁a", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁there",
    ];

    private const int EosId = 0, HelloId = 1, WorldId = 2, BangId = 3, SpaceId = 4, E2 = 5, X82 = 6, XAC = 7, AId = 8,
        F0 = 9, X9F = 10, X98 = 11, X80 = 12, ThereId = 13;

    private static string FakeDecode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (id == EosId)
            {
                continue;
            }
            string tok = Vocab[id];
            if (tok.StartsWith("<0x", StringComparison.Ordinal))
            {
                bytes.Add(Convert.ToByte(tok[3..5], 16));
            }
            else
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(tok.Replace('▁', ' ')));
            }
        }
        string s = Encoding.UTF8.GetString([.. bytes]);
        return s.StartsWith(' ') ? s[1..] : s;
    }

    [Fact]
    public void Push_LeadingSpaceTokens_EmitsStableDeltas()
    {
        var d = new StreamingDecoder(FakeDecode);
        Assert.Equal("Hello", d.Push(HelloId));
        Assert.Equal(" world", d.Push(WorldId));
        Assert.Equal("!", d.Push(BangId));
        Assert.Equal("Hello world!", d.Text);
        Assert.Equal(3, d.Count);
    }

    [Fact]
    public void Push_MultiByteCharSplitAcrossByteTokens_HoldsBackUntilComplete()
    {
        var d = new StreamingDecoder(FakeDecode);
        Assert.Equal("a", d.Push(AId));
        Assert.Equal(" ", d.Push(SpaceId));
        Assert.Equal("", d.Push(E2));
        Assert.Equal("", d.Push(X82));
        Assert.Equal(2, d.PendingCount);
        Assert.Equal("€", d.Push(XAC));
        Assert.Equal(0, d.PendingCount);
        Assert.Equal("a €", d.Text);
    }

    [Fact]
    public void Push_FourByteEmojiThenWord_NeverEmitsReplacementChar()
    {
        var d = new StreamingDecoder(FakeDecode);
        int[] ids = [HelloId, SpaceId, F0, X9F, X98, X80, WorldId, E2, X82, XAC, BangId];
        var deltas = ids.Select(d.Push).ToList();
        Assert.DoesNotContain(deltas, s => s.Contains('\uFFFD'));
        Assert.Equal(FakeDecode(ids), string.Concat(deltas));
        Assert.Equal("Hello 😀 world€!", d.Text);
    }

    [Fact]
    public void Push_SkippedSpecialToken_EmitsNothing()
    {
        var d = new StreamingDecoder(FakeDecode);
        Assert.Equal("Hello", d.Push(HelloId));
        Assert.Equal("", d.Push(EosId));
        Assert.Equal("", d.Flush());
        Assert.Equal("Hello", d.Text);
    }

    [Fact]
    public void Push_WithPromptContext_KeepsLeadingSpaceOfFirstToken()
    {
        var d = new StreamingDecoder(FakeDecode, context: [HelloId]);
        Assert.Equal(" there", d.Push(ThereId));
        Assert.Equal(" there", d.Text);
        Assert.Equal(1, d.Count);
    }

    [Fact]
    public void Flush_IncompleteUtf8AtEnd_EmitsReplacementChar()
    {
        var d = new StreamingDecoder(FakeDecode);
        Assert.Equal("Hello", d.Push(HelloId));
        Assert.Equal("", d.Push(E2));
        Assert.Equal("\uFFFD", d.Flush());
        Assert.Equal("", d.Flush());
    }

    [Fact]
    public void Push_InvalidByteFollowedByText_EmitsReplacementAndMovesOn()
    {
        var d = new StreamingDecoder(FakeDecode);
        Assert.Equal("", d.Push(E2));
        Assert.Equal("\uFFFD world", d.Push(WorldId));
    }

    [Fact]
    public void Push_RealTokenizerIdsOneByOne_ConcatenationEqualsFullDecode()
    {
        using var files = new T();
        files.WriteTokenizer().WriteConfig();
        using var tok = new HfTokenizer(files.Dir);
        const string text = "hello wörld 😀 hello! é";
        int[] ids = tok.Encode(text);
        var d = new StreamingDecoder(tok);
        var deltas = ids.Select(d.Push).ToList();
        deltas.Add(d.Flush());
        Assert.DoesNotContain(deltas, s => s.Contains('\uFFFD'));
        Assert.Equal(tok.Decode(ids), string.Concat(deltas));
        Assert.Equal(text, d.Text);
    }

    [Fact]
    public void Push_RealTokenizerKeepingSpecialTokens_EmitsThem()
    {
        using var files = new T();
        files.WriteTokenizer().WriteConfig();
        using var tok = new HfTokenizer(files.Dir);
        var d = new StreamingDecoder(tok, skipSpecialTokens: false);
        string s = d.Push([T.Hello, T.World, T.Eos]);
        Assert.Equal("hello world</s>", s + d.Flush());
    }
}

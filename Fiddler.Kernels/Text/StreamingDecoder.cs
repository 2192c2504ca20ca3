using System.Text;

namespace Fiddler.Kernels.Text;

/// <summary>
/// Incremental detokenizer for streaming generation: push token ids one at a time and get back only the text that
/// became final.
/// </summary>
/// <remarks>
/// Tokens do not decode independently: SentencePiece-style tokenizers turn "▁" into a space and strip the first
/// one of a sequence, and byte-fallback tokens (<c>&lt;0xE2&gt;</c>...) carry pieces of one UTF-8 character.
/// So, as HF's DecodeStream / TGI / vLLM do, each step decodes a short window of ids twice, the window already
/// emitted (<c>[prefix, read)</c>) and the same window plus the new ids (<c>[prefix, end)</c>), and emits only the
/// suffix by which the second is longer. While the decoded text ends in U+FFFD (an incomplete UTF-8 sequence)
/// nothing is emitted and the ids stay pending; <see cref="Flush"/> emits whatever is still pending when
/// generation ends (including a genuine trailing U+FFFD). The concatenation of all returned deltas equals
/// <c>Decode(allIds)</c> for prefix-stable decoders (the Mistral/Llama/GPT-2 ones are).
/// Not thread-safe; use one instance per generation.
/// </remarks>
public sealed class StreamingDecoder
{
    private const char ReplacementChar = '\uFFFD';

    private readonly Func<IReadOnlyList<int>, string> _decode;
    private readonly List<int> _ids = [];
    private readonly StringBuilder _text = new();
    private readonly int _contextCount;
    private int _prefixOffset;
    private int _readOffset;
    private string? _prefixText; // cached decode of [_prefixOffset, _readOffset)

    /// <summary>Decodes with <paramref name="tokenizer"/>.</summary>
    /// <param name="tokenizer">The tokenizer.</param>
    /// <param name="skipSpecialTokens">Whether special tokens (e.g. EOS) are left out of the text.</param>
    /// <param name="context">Optional ids that precede the generated ones, typically the last few (4-8) prompt
    /// ids. They are never emitted, but they make the first generated token decode as it does mid-sequence (e.g.
    /// "▁Hello" gives " Hello" instead of the sequence-initial "Hello"). Without context the deltas add up to
    /// <c>Decode(generatedIds)</c>, like transformers' TextStreamer.</param>
    public StreamingDecoder(HfTokenizer tokenizer, bool skipSpecialTokens = true, IReadOnlyList<int>? context = null)
        : this(CreateDecode(tokenizer, skipSpecialTokens), context)
    {
    }

    /// <summary>Prompt ids a generation's decoder sees before the first new token (<see cref="ContextOf"/>).</summary>
    public const int PromptContextIds = 6;

    /// <summary>The last <see cref="PromptContextIds"/> ids of <paramref name="prompt"/>: with them as context the first
    /// new token decodes as it does after the prompt ("▁Paris" → " Paris"), as transformers' pipeline, vLLM and OpenAI's
    /// completions give it, so prompt text + generated text reads as the whole sequence.</summary>
    public static int[] ContextOf(IReadOnlyList<int> prompt) => [.. prompt.Skip(Math.Max(0, prompt.Count - PromptContextIds))];

    /// <summary>The text of <paramref name="ids"/> as a generation after <paramref name="prompt"/> streams it.</summary>
    public static string DecodeAfter(HfTokenizer tokenizer, IReadOnlyList<int> prompt, IReadOnlyList<int> ids)
    {
        var d = new StreamingDecoder(tokenizer, context: ContextOf(prompt));
        return d.Push(ids) + d.Flush();
    }

    /// <summary>Decodes with an arbitrary function from ids to text (for tests or other tokenizers).</summary>
    public StreamingDecoder(Func<IReadOnlyList<int>, string> decode, IReadOnlyList<int>? context = null)
    {
        ArgumentNullException.ThrowIfNull(decode);
        _decode = decode;
        if (context is not null)
        {
            _ids.AddRange(context);
            _contextCount = context.Count;
            _readOffset = context.Count;
        }
    }

    /// <summary>All text emitted so far (by <see cref="Push(int)"/> and <see cref="Flush"/>).</summary>
    public string Text => _text.ToString();

    /// <summary>Number of ids pushed (context ids not counted).</summary>
    public int Count => _ids.Count - _contextCount;

    /// <summary>Ids pushed whose text has not been emitted yet (waiting for the rest of a UTF-8 character).</summary>
    public int PendingCount => _ids.Count - _readOffset;

    /// <summary>Adds one token id and returns the text it completed (often empty).</summary>
    public string Push(int id)
    {
        _ids.Add(id);
        return Advance(final: false);
    }

    /// <summary>Adds several ids and returns the text they completed.</summary>
    public string Push(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            sb.Append(Push(id));
        }
        return sb.ToString();
    }

    /// <summary>Emits whatever text is still held back (call once generation has ended).</summary>
    public string Flush() => Advance(final: true);

    private string Advance(bool final)
    {
        if (_readOffset == _ids.Count)
        {
            return string.Empty;
        }

        _prefixText ??= _decode(_ids.GetRange(_prefixOffset, _readOffset - _prefixOffset));
        string newText = _decode(_ids.GetRange(_prefixOffset, _ids.Count - _prefixOffset));

        if (newText.Length <= _prefixText.Length || (!final && newText[^1] == ReplacementChar))
        {
            // Nothing new yet (e.g. a skipped special token) or an incomplete UTF-8 character: keep pending.
            if (final)
            {
                MoveWindow();
            }
            return string.Empty;
        }

        string delta = newText[_prefixText.Length..];
        MoveWindow();
        _text.Append(delta);
        return delta;
    }

    private void MoveWindow()
    {
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        _prefixText = null;
    }

    private static Func<IReadOnlyList<int>, string> CreateDecode(HfTokenizer tokenizer, bool skipSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return ids => tokenizer.Decode(ids, skipSpecialTokens);
    }
}

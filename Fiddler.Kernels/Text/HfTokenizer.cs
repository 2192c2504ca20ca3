using System.Text.Json.Nodes;
using NativeTokenizer = Tokenizers.DotNet.Tokenizer;
using NativeTokenizerException = Tokenizers.DotNet.TokenizerException;

namespace Fiddler.Kernels.Text;

/// <summary>
/// A Hugging Face tokenizer (<c>tokenizer.json</c>, run by the Rust <c>tokenizers</c> crate 0.22.2 through
/// Tokenizers.DotNet) plus the bits of <c>tokenizer_config.json</c> that an inference engine needs.
/// </summary>
/// <remarks>
/// <para>Tokenizers.DotNet 1.4.1 exposes only <c>Encode(string)</c>, which always calls
/// <c>encode_fast(text, add_special_tokens: true)</c>, and <c>Decode(uint[])</c>, which always calls
/// <c>decode(ids, skip_special_tokens: true)</c>. The other two modes are obtained by loading extra native
/// instances from rewritten copies of <c>tokenizer.json</c> (written to a temp file, loaded, deleted):</para>
/// <list type="bullet">
/// <item>encode without special tokens: a copy with <c>post_processor: null</c>. In HF tokenizers the
/// post-processor is the only stage that looks at <c>add_special_tokens</c>, and without one the encoding is just
/// the concatenated sequence, so the ids equal <c>encode(text, add_special_tokens=False)</c>.</item>
/// <item>decode without skipping special tokens: a copy in which every <c>added_tokens[*].special</c> is false, so
/// the native <c>skip_special_tokens=true</c> filter skips nothing while the decoder chain still sees the whole
/// sequence (e.g. Mistral gives <c>"&lt;s&gt; Hello"</c>, exactly as HF does).</item>
/// </list>
/// <para>Like transformers' fast tokenizers, the <c>truncation</c> and <c>padding</c> sections of tokenizer.json
/// are ignored. For Llama-family <c>tokenizer_class</c> values (Llama, CodeLlama, Gemma; Mistral/Mixtral ship
/// <c>LlamaTokenizer</c>) transformers rebuilds the post-processor from <c>add_bos_token</c>/<c>add_eos_token</c>
/// (defaults true/false); this class does the same. For any other class the post-processor of tokenizer.json
/// decides which special tokens are added.</para>
/// <para>All file problems surface as <see cref="TokenizerLoadException"/> naming the file. tokenizer.json is parsed
/// as JSON in managed code before it reaches the native library (which is built with panic=abort).</para>
/// <para>Instances are thread-safe for <see cref="Encode"/> and <see cref="Decode"/>.</para>
/// </remarks>
public sealed class HfTokenizer : IDisposable
{
    private static readonly string[] LlamaPolicyClasses =
    [
        "LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast",
        "GemmaTokenizer", "GemmaTokenizerFast",
    ];

    private const int NativeInvalidInput = 20001; // Tokenizers.DotNet TokenizerErrorCode.InvalidInput

    private readonly NativeTokenizer _full;      // post-processor kept: encode with special tokens, decode skipping them
    private readonly NativeTokenizer _raw;       // post-processor removed: encode without special tokens
    private readonly NativeTokenizer _decodeAll; // no token flagged special: decode keeping special tokens
    private readonly List<NativeTokenizer> _owned = [];
    private readonly Dictionary<string, int> _tokenToId;
    private readonly string?[] _idToToken;
    private readonly HashSet<int> _specialIds;
    private readonly bool _llamaPolicy;
    private readonly bool _addBos;
    private readonly bool _addEos;
    private volatile bool _disposed;

    /// <summary>Loads a tokenizer from a model directory (containing tokenizer.json and optionally
    /// tokenizer_config.json / chat_template.jinja) or from the path of a tokenizer.json file.</summary>
    /// <exception cref="TokenizerLoadException">A file is missing, unreadable, malformed or rejected.</exception>
    public HfTokenizer(string modelDirOrTokenizerJson)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirOrTokenizerJson);
        string dir;
        string jsonPath;
        if (Directory.Exists(modelDirOrTokenizerJson))
        {
            dir = Path.GetFullPath(modelDirOrTokenizerJson);
            jsonPath = Path.Combine(dir, "tokenizer.json");
        }
        else if (modelDirOrTokenizerJson.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            jsonPath = Path.GetFullPath(modelDirOrTokenizerJson);
            dir = Path.GetDirectoryName(jsonPath) ?? ".";
        }
        else
        {
            dir = Path.GetFullPath(modelDirOrTokenizerJson); // a directory that does not exist: reported below
            jsonPath = Path.Combine(dir, "tokenizer.json");
        }
        TokenizerPath = jsonPath;

        // 1. tokenizer.json: read and validate in managed code first.
        if (!File.Exists(jsonPath))
        {
            throw new TokenizerLoadException(jsonPath, "tokenizer.json not found",
                new FileNotFoundException("tokenizer.json not found", jsonPath));
        }
        var (root, model) = TokenizerJson.Load(jsonPath, out bool hadBom);

        (_tokenToId, _idToToken, _specialIds) = TokenizerJson.ReadVocabulary(jsonPath, root, model);
        TokenizerJson.ValidatePostProcessor(jsonPath, root["post_processor"]);
        TokenizerJson.ValidateDecoder(jsonPath, root["decoder"]);
        VocabSize = _idToToken.Length;
        MaxTokenChars = Math.Max(1, _idToToken.Max(t => t?.Length ?? 0));

        // 2. tokenizer_config.json (optional) and chat template.
        var config = TokenizerConfigInfo.Load(dir);
        TokenizerClass = config.TokenizerClass;
        BosToken = config.BosToken;
        EosToken = config.EosToken;
        BosId = BosToken is null ? null : TokenToId(BosToken);
        EosId = EosToken is null ? null : TokenToId(EosToken);
        CleanUpTokenizationSpaces = config.CleanUpTokenizationSpaces;
        ChatTemplate = config.ChatTemplate;
        _llamaPolicy = config.TokenizerClass is { } cls && Array.IndexOf(LlamaPolicyClasses, cls) >= 0;
        _addBos = config.AddBosToken ?? true;
        _addEos = config.AddEosToken ?? false;

        // 3. Native instances.
        try
        {
            // Each variant is rewritten from the previous one, in place.
            bool hadSettings = TokenizerJson.ClearTruncationAndPadding(root);
            _full = hadBom || hadSettings ? LoadNativeFromJson(jsonPath, root) : LoadNative(jsonPath, jsonPath);

            _raw = TokenizerJson.RemovePostProcessor(root) ? LoadNativeFromJson(jsonPath, root) : _full;

            if (_specialIds.Count == 0)
            {
                _decodeAll = _raw;
            }
            else
            {
                TokenizerJson.ClearSpecialFlags(root);
                _decodeAll = LoadNativeFromJson(jsonPath, root);
            }

            // Some inconsistencies are accepted by deserialisation and only fail when encoding (as errors; the
            // known panics are ruled out by TokenizerJson.ValidatePostProcessor): surface them now, as a load error.
            Probe(jsonPath, _full);
        }
        catch
        {
            foreach (var t in _owned)
            {
                t.Dispose();
            }
            throw;
        }
    }

    /// <summary>Full path of the tokenizer.json that was loaded.</summary>
    public string TokenizerPath { get; }

    /// <summary><c>tokenizer_class</c> from tokenizer_config.json, if any.</summary>
    public string? TokenizerClass { get; }

    /// <summary>BOS token text from tokenizer_config.json (<c>bos_token</c>), if any.</summary>
    public string? BosToken { get; }

    /// <summary>EOS token text from tokenizer_config.json (<c>eos_token</c>), if any.</summary>
    public string? EosToken { get; }

    /// <summary>Id of <see cref="BosToken"/>; null when there is no config, no bos_token, or it is not in the vocabulary.</summary>
    public int? BosId { get; }

    /// <summary>Id of <see cref="EosToken"/>; null when there is no config, no eos_token, or it is not in the vocabulary.</summary>
    public int? EosId { get; }

    /// <summary>Highest token id (model vocabulary or added tokens) plus one: the number of embedding rows the ids
    /// can address. For Mixtral this is 32000. (HF's <c>get_vocab_size(true)</c> counts the same set.)</summary>
    public int VocabSize { get; }

    /// <summary>The longest token's text in UTF-16 chars (at least 1): no token covers more of a text, so a text of n chars
    /// needs at least n / this many tokens (a bound servers can check before they pay for encoding it).</summary>
    public int MaxTokenChars { get; }

    /// <summary>Jinja chat template: <c>chat_template</c> of tokenizer_config.json (a string, or the entry named
    /// "default" / the first entry of a list of named templates), else chat_template.jinja, else
    /// chat_template.json; null when none.</summary>
    public string? ChatTemplate { get; }

    /// <summary>Whether <see cref="Decode"/> applies transformers' <c>clean_up_tokenization</c>
    /// (from tokenizer_config.json; false when absent, as Mixtral's config says).</summary>
    public bool CleanUpTokenizationSpaces { get; }

    /// <summary>Ids of the added tokens flagged <c>special</c> in tokenizer.json.</summary>
    public IReadOnlySet<int> SpecialIds => _specialIds;

    /// <summary>Encodes <paramref name="text"/>. With <paramref name="addSpecialTokens"/> the tokenizer's
    /// special tokens are added (for Mixtral: a leading BOS); special-token text inside <paramref name="text"/>
    /// (e.g. a literal <c>&lt;s&gt;</c> from a rendered chat template) is recognised either way, as in HF.</summary>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!addSpecialTokens)
        {
            return ToInt32(NativeEncode(_raw, text));
        }
        if (!_llamaPolicy)
        {
            return ToInt32(NativeEncode(_full, text));
        }

        uint[] body = NativeEncode(_raw, text);
        bool bos = _addBos && BosId is not null;
        bool eos = _addEos && EosId is not null;
        var ids = new int[body.Length + (bos ? 1 : 0) + (eos ? 1 : 0)];
        int o = 0;
        if (bos)
        {
            ids[o++] = BosId!.Value;
        }
        for (int i = 0; i < body.Length; i++)
        {
            ids[o++] = checked((int)body[i]);
        }
        if (eos)
        {
            ids[o] = EosId!.Value;
        }
        return ids;
    }

    /// <summary>Decodes ids to text. Ids at or beyond the vocabulary are dropped (as HF does);
    /// negative ids throw.</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var arr = new uint[ids.Count];
        for (int i = 0; i < arr.Length; i++)
        {
            int id = ids[i];
            if (id < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id at position {i} is negative.");
            }
            arr[i] = (uint)id;
        }

        string text;
        try
        {
            text = (skipSpecialTokens ? _full : _decodeAll).Decode(arr);
        }
        catch (NativeTokenizerException ex)
        {
            throw new InvalidOperationException($"HF tokenizers failed to decode {arr.Length} ids: {ex.Message}", ex);
        }
        return CleanUpTokenizationSpaces ? CleanUpTokenization(text) : text;
    }

    /// <summary>Id of a token string (added tokens first, then the model vocabulary), or null.</summary>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return _tokenToId.TryGetValue(token, out int id) ? id : null;
    }

    /// <summary>Token string of an id (as stored in the vocabulary, e.g. <c>▁Hello</c> or <c>&lt;0x0A&gt;</c>), or null.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    /// <summary>Whether <paramref name="id"/> is an added token flagged special.</summary>
    public bool IsSpecial(int id) => _specialIds.Contains(id);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (var t in _owned)
        {
            t.Dispose();
        }
        _owned.Clear();
    }

    /// <summary>transformers' <c>PreTrainedTokenizerBase.clean_up_tokenization</c>.</summary>
    public static string CleanUpTokenization(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return text
            .Replace(" .", ".", StringComparison.Ordinal)
            .Replace(" ?", "?", StringComparison.Ordinal)
            .Replace(" !", "!", StringComparison.Ordinal)
            .Replace(" ,", ",", StringComparison.Ordinal)
            .Replace(" ' ", "'", StringComparison.Ordinal)
            .Replace(" n't", "n't", StringComparison.Ordinal)
            .Replace(" 'm", "'m", StringComparison.Ordinal)
            .Replace(" 's", "'s", StringComparison.Ordinal)
            .Replace(" 've", "'ve", StringComparison.Ordinal)
            .Replace(" 're", "'re", StringComparison.Ordinal);
    }

    private static uint[] NativeEncode(NativeTokenizer tokenizer, string text)
    {
        try
        {
            return tokenizer.Encode(text);
        }
        catch (NativeTokenizerException ex) when (ex.ErrorCode == NativeInvalidInput)
        {
            // e.g. a string with unpaired surrogates (not valid UTF-16)
            throw new ArgumentException($"HF tokenizers rejected the text: {ex.Message}", nameof(text), ex);
        }
        catch (NativeTokenizerException ex)
        {
            throw new InvalidOperationException($"HF tokenizers failed to encode the text: {ex.Message}", ex);
        }
    }

    private static int[] ToInt32(uint[] ids)
    {
        var r = new int[ids.Length];
        for (int i = 0; i < r.Length; i++)
        {
            r[i] = checked((int)ids[i]);
        }
        return r;
    }

    private static void Probe(string path, NativeTokenizer tokenizer)
    {
        try
        {
            tokenizer.Decode(tokenizer.Encode(string.Empty));
        }
        catch (NativeTokenizerException ex)
        {
            throw new TokenizerLoadException(path, $"tokenizer.json loads but cannot encode: {ex.Message}", ex);
        }
    }

    private NativeTokenizer LoadNativeFromJson(string originalPath, JsonObject root) =>
        TokenizerJson.LoadFromTempCopy(originalPath, root, tmp => LoadNative(originalPath, tmp));

    private NativeTokenizer LoadNative(string originalPath, string pathToLoad)
    {
        NativeTokenizer t;
        try
        {
            t = new NativeTokenizer(pathToLoad);
        }
        catch (NativeTokenizerException ex)
        {
            throw new TokenizerLoadException(originalPath, $"HF tokenizers rejected tokenizer.json: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            throw new TokenizerLoadException(originalPath,
                "the HF tokenizers native library (libhf_tokenizers, package Tokenizers.DotNet.runtime.*) could not be loaded: " + ex.Message, ex);
        }
        _owned.Add(t);
        return t;
    }

    // Kept for TokenizerConfigInfo, which reads its files through these.
    internal static byte[] ReadFile(string path) => TokenizerJson.ReadFile(path);

    internal static JsonObject ParseObject(string path, ReadOnlyMemory<byte> utf8, string what) =>
        TokenizerJson.ParseObject(path, utf8, what);
}

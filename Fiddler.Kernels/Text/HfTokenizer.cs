using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
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

    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = 128 };

    private static readonly JsonSerializerOptions WriteOptions = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

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
        byte[] bytes = ReadFile(jsonPath);
        bool hadBom = bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]);
        JsonObject root = ParseObject(jsonPath, hadBom ? bytes.AsMemory(3) : bytes, "tokenizer.json");
        if (root["model"] is not JsonObject model)
        {
            throw new TokenizerLoadException(jsonPath, "tokenizer.json has no \"model\" object; not a Hugging Face tokenizer file");
        }

        (_tokenToId, _idToToken, _specialIds) = ReadVocabulary(jsonPath, root, model);
        ValidatePostProcessor(jsonPath, root["post_processor"]);
        VocabSize = _idToToken.Length;

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
            bool needsSanitizing = hadBom || !IsNull(root["truncation"]) || !IsNull(root["padding"]);
            root["truncation"] = null;
            root["padding"] = null;
            _full = needsSanitizing ? LoadNativeFromJson(jsonPath, root) : LoadNative(jsonPath, jsonPath);

            if (IsNull(root["post_processor"]))
            {
                _raw = _full;
            }
            else
            {
                root["post_processor"] = null;
                _raw = LoadNativeFromJson(jsonPath, root);
            }

            if (_specialIds.Count == 0)
            {
                _decodeAll = _raw;
            }
            else
            {
                foreach (var tok in (JsonArray)root["added_tokens"]!)
                {
                    ((JsonObject)tok!)["special"] = false;
                }
                _decodeAll = LoadNativeFromJson(jsonPath, root);
            }

            // Some inconsistencies are accepted by deserialisation and only fail when encoding (as errors; the
            // known panics are ruled out by ValidatePostProcessor): surface them now, as a load error.
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

    /// <summary>
    /// tokenizers 0.22.2 deserialises a TemplateProcessing without checking it, then panics while encoding (and
    /// the native library aborts the process on panic) when a template names a special token missing from
    /// <c>special_tokens</c>, when the single-sequence template uses <c>$B</c>, or (later) when a special token's
    /// <c>ids</c> and <c>tokens</c> differ in length. Check those here.
    /// </summary>
    private static void ValidatePostProcessor(string path, JsonNode? node)
    {
        if (IsNull(node) || node is not JsonObject o)
        {
            return; // null, or a shape serde will reject with an error
        }
        string? type = o["type"] is JsonValue tv && tv.GetValueKind() == JsonValueKind.String ? tv.GetValue<string>() : null;
        if (type == "Sequence" && o["processors"] is JsonArray processors)
        {
            foreach (var p in processors)
            {
                ValidatePostProcessor(path, p);
            }
            return;
        }
        if (type != "TemplateProcessing")
        {
            return;
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        if (o["special_tokens"] is JsonObject specials)
        {
            foreach (var (name, value) in specials)
            {
                names.Add(name);
                if (value is JsonObject st && st["ids"] is JsonArray ids && st["tokens"] is JsonArray tokens && ids.Count != tokens.Count)
                {
                    throw new TokenizerLoadException(path,
                        $"post_processor special token \"{name}\" has {ids.Count} ids but {tokens.Count} tokens");
                }
            }
        }
        CheckTemplate("single", allowB: false);
        CheckTemplate("pair", allowB: true);

        void CheckTemplate(string key, bool allowB)
        {
            if (o[key] is not JsonArray pieces)
            {
                return;
            }
            foreach (var piece in pieces)
            {
                if (piece is not JsonObject po)
                {
                    continue;
                }
                if (po["SpecialToken"] is JsonObject st && st["id"] is JsonValue idv && idv.GetValueKind() == JsonValueKind.String
                    && !names.Contains(idv.GetValue<string>()))
                {
                    throw new TokenizerLoadException(path,
                        $"post_processor {key} template uses special token \"{idv.GetValue<string>()}\" that is not in its special_tokens");
                }
                if (!allowB && po["Sequence"] is JsonObject sq && sq["id"] is JsonValue sv && sv.GetValueKind() == JsonValueKind.String
                    && sv.GetValue<string>() == "B")
                {
                    throw new TokenizerLoadException(path, $"post_processor {key} template uses sequence B");
                }
            }
        }
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

    private static bool IsNull(JsonNode? node) => node is null || node.GetValueKind() == JsonValueKind.Null;

    private NativeTokenizer LoadNativeFromJson(string originalPath, JsonObject root)
    {
        string tmp = Path.Combine(Path.GetTempPath(), $"fiddler-tokenizer-{Guid.NewGuid():N}.json");
        try
        {
            try
            {
                File.WriteAllText(tmp, root.ToJsonString(WriteOptions), new UTF8Encoding(false));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new TokenizerLoadException(originalPath,
                    $"could not write a rewritten copy of tokenizer.json to {tmp}: {ex.Message}", ex);
            }
            return LoadNative(originalPath, tmp);
        }
        finally
        {
            try
            {
                File.Delete(tmp);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // best effort: the native library has already read the file
            }
        }
    }

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

    internal static byte[] ReadFile(string path)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TokenizerLoadException(path, $"could not read file: {ex.Message}", ex);
        }
    }

    internal static JsonObject ParseObject(string path, ReadOnlyMemory<byte> utf8, string what)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(utf8.Span, documentOptions: DocumentOptions);
        }
        catch (JsonException ex)
        {
            throw new TokenizerLoadException(path, $"{what} is not valid JSON: {ex.Message}", ex);
        }
        if (node is not JsonObject obj)
        {
            throw new TokenizerLoadException(path, $"{what} must contain a JSON object at the top level");
        }
        try
        {
            _ = obj.Count; // materialises the top-level properties: throws on duplicate keys
        }
        catch (ArgumentException ex)
        {
            throw new TokenizerLoadException(path, $"{what} has duplicate top-level keys: {ex.Message}", ex);
        }
        return obj;
    }

    private static (Dictionary<string, int>, string?[], HashSet<int>) ReadVocabulary(string path, JsonObject root, JsonObject model)
    {
        var tokenToId = new Dictionary<string, int>(StringComparer.Ordinal);
        var idToToken = new Dictionary<int, string>();
        var special = new HashSet<int>();
        int maxId = -1;

        void Add(string token, int id, bool overrideExisting)
        {
            if (id < 0)
            {
                throw new TokenizerLoadException(path, $"tokenizer.json has a negative id {id} for token \"{token}\"");
            }
            if (overrideExisting || !tokenToId.ContainsKey(token))
            {
                tokenToId[token] = id;
            }
            if (overrideExisting || !idToToken.ContainsKey(id))
            {
                idToToken[id] = token;
            }
            maxId = Math.Max(maxId, id);
        }

        try
        {
            switch (model["vocab"])
            {
                case JsonObject vocab: // BPE, WordLevel, WordPiece: {"token": id}
                    foreach (var (token, idNode) in vocab)
                    {
                        Add(token, idNode!.GetValue<int>(), overrideExisting: false);
                    }
                    break;
                case JsonArray pieces: // Unigram: [["token", score], ...], id = index
                    for (int i = 0; i < pieces.Count; i++)
                    {
                        Add(pieces[i]![0]!.GetValue<string>(), i, overrideExisting: false);
                    }
                    break;
                case null:
                    break;
                default:
                    throw new TokenizerLoadException(path, "tokenizer.json: model.vocab must be an object or an array");
            }

            switch (root["added_tokens"])
            {
                case JsonArray added:
                    foreach (var entry in added)
                    {
                        if (entry is not JsonObject o || o["content"] is null || o["id"] is null)
                        {
                            throw new TokenizerLoadException(path, "tokenizer.json: every added_tokens entry needs \"id\" and \"content\"");
                        }
                        int id = o["id"]!.GetValue<int>();
                        Add(o["content"]!.GetValue<string>(), id, overrideExisting: true);
                        if (o["special"] is { } sp && sp.GetValueKind() == JsonValueKind.True)
                        {
                            special.Add(id);
                        }
                    }
                    break;
                case var n when IsNull(n):
                    break;
                default:
                    throw new TokenizerLoadException(path, "tokenizer.json: added_tokens must be an array");
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or JsonException or IndexOutOfRangeException or ArgumentException)
        {
            throw new TokenizerLoadException(path, $"tokenizer.json has a malformed vocabulary: {ex.Message}", ex);
        }

        if (maxId < 0)
        {
            throw new TokenizerLoadException(path, "tokenizer.json has an empty vocabulary");
        }
        var table = new string?[maxId + 1];
        foreach (var (id, token) in idToToken)
        {
            table[id] = token;
        }
        return (tokenToId, table, special);
    }
}

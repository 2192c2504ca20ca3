using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Fiddler.Kernels.Text;

/// <summary>
/// The managed side of <see cref="HfTokenizer"/>'s handling of <c>tokenizer.json</c> (and the JSON reading shared with
/// <see cref="TokenizerConfigInfo"/>): reading and parsing files, checking what the native library (built with
/// panic=abort) would otherwise crash on, reading the vocabulary, and rewriting the document in place for the extra
/// native instances (temp copy written, loaded, deleted). Every problem surfaces as a
/// <see cref="TokenizerLoadException"/> naming the file.
/// </summary>
internal static class TokenizerJson
{
    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = 128 };

    private static readonly JsonSerializerOptions WriteOptions = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

    /// <summary>Reads and parses tokenizer.json (a leading UTF-8 BOM is skipped and reported through
    /// <paramref name="hadBom"/>); requires a top-level <c>model</c> object.</summary>
    internal static (JsonObject Root, JsonObject Model) Load(string jsonPath, out bool hadBom)
    {
        byte[] bytes = ReadFile(jsonPath);
        hadBom = bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]);
        JsonObject root = ParseObject(jsonPath, hadBom ? bytes.AsMemory(3) : bytes, "tokenizer.json");
        if (root["model"] is not JsonObject model)
        {
            throw new TokenizerLoadException(jsonPath, "tokenizer.json has no \"model\" object; not a Hugging Face tokenizer file");
        }
        return (root, model);
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

    internal static bool IsNull(JsonNode? node) => node is null || node.GetValueKind() == JsonValueKind.Null;

    /// <summary>Sets <c>truncation</c> and <c>padding</c> to null (transformers' fast tokenizers ignore both);
    /// returns whether either was set.</summary>
    internal static bool ClearTruncationAndPadding(JsonObject root)
    {
        bool wasSet = !IsNull(root["truncation"]) || !IsNull(root["padding"]);
        root["truncation"] = null;
        root["padding"] = null;
        return wasSet;
    }

    /// <summary>Sets <c>post_processor</c> to null; returns false (changing nothing) when it already was.</summary>
    internal static bool RemovePostProcessor(JsonObject root)
    {
        if (IsNull(root["post_processor"]))
        {
            return false;
        }
        root["post_processor"] = null;
        return true;
    }

    /// <summary>Sets every <c>added_tokens[*].special</c> to false. Only for a document whose added_tokens
    /// <see cref="ReadVocabulary"/> accepted with at least one special token (so it is an array of objects).</summary>
    internal static void ClearSpecialFlags(JsonObject root)
    {
        foreach (var tok in (JsonArray)root["added_tokens"]!)
        {
            ((JsonObject)tok!)["special"] = false;
        }
    }

    /// <summary>Writes <paramref name="root"/> to a temp file, calls <paramref name="load"/> with its path and deletes
    /// the file again (best effort) whether or not loading succeeded.</summary>
    internal static T LoadFromTempCopy<T>(string originalPath, JsonObject root, Func<string, T> load)
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
            return load(tmp);
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

    /// <summary>
    /// tokenizers 0.22.2's <c>Strip</c> decoder slices each token between the content characters it strips from the
    /// start and from the end; with both counts above zero, a token made only of those characters (e.g. "▁") gives a
    /// reversed range and a panic, which aborts the process. Transformers' tokenizers strip one end only (Llama and
    /// Mistral: <c>start 1, stop 0</c>); a decoder that strips both, or a negative count, is refused here.
    /// </summary>
    internal static void ValidateDecoder(string path, JsonNode? node)
    {
        if (IsNull(node) || node is not JsonObject o)
        {
            return;
        }
        string? type = o["type"] is JsonValue tv && tv.GetValueKind() == JsonValueKind.String ? tv.GetValue<string>() : null;
        if (type == "Sequence" && o["decoders"] is JsonArray decoders)
        {
            foreach (var d in decoders)
            {
                ValidateDecoder(path, d);
            }
            return;
        }
        if (type != "Strip")
        {
            return;
        }
        long Count(string name) => o[name] is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long n) ? n : 0;
        long start = Count("start"), stop = Count("stop");
        if (start < 0 || stop < 0 || (start > 0 && stop > 0))
        {
            throw new TokenizerLoadException(path, $"decoder Strip with start {start} and stop {stop} is not supported " +
                "(it can crash the tokenizer library on some tokens): strip one end only");
        }
    }

    /// <summary>
    /// tokenizers 0.22.2 deserialises a TemplateProcessing without checking it, then panics while encoding (and
    /// the native library aborts the process on panic) when a template names a special token missing from
    /// <c>special_tokens</c>, when the single-sequence template uses <c>$B</c>, or (later) when a special token's
    /// <c>ids</c> and <c>tokens</c> differ in length. Check those here.
    /// </summary>
    internal static void ValidatePostProcessor(string path, JsonNode? node)
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

    /// <summary>Largest vocabulary accepted (2^28 ids; the largest public vocabularies hold ~2^18).</summary>
    internal const int MaxTokenId = 1 << 28;

    /// <summary>Token ↔ id tables (added tokens override the model vocabulary) and the ids of special added tokens.</summary>
    internal static (Dictionary<string, int>, string?[], HashSet<int>) ReadVocabulary(string path, JsonObject root, JsonObject model)
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
            if (id >= MaxTokenId) // the id → token table is an array indexed by id
            {
                throw new TokenizerLoadException(path, $"tokenizer.json has id {id} for token \"{token}\": ids must be below {MaxTokenId}");
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
                        Add(token, (idNode ?? throw new TokenizerLoadException(path, $"tokenizer.json: model.vocab entry '{token}' has no id (null)"))
                            .GetValue<int>(), overrideExisting: false);
                    }
                    break;
                case JsonArray pieces: // Unigram: [["token", score], ...], id = index
                    for (int i = 0; i < pieces.Count; i++)
                    {
                        var piece = pieces[i] is JsonArray { Count: > 0 } p && p[0] is { } text ? text
                            : throw new TokenizerLoadException(path, $"tokenizer.json: model.vocab piece {i} is not [\"token\", score]");
                        Add(piece.GetValue<string>(), i, overrideExisting: false);
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
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or JsonException or IndexOutOfRangeException
            or ArgumentException or OverflowException)
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

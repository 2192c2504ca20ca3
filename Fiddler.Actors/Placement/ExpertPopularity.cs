using System.Text.Json;
using System.Text.Json.Serialization;

namespace Fiddler.Actors.Placement;

/// <summary>
/// How often the router chose each (layer, expert) over a prompt set: what <c>fiddler profile</c> writes and what
/// placement reads. File format: <c>{"model": "...", "layers": L, "experts": E, "tokens": N, "counts": [[E ints] x L]}</c>.
/// <see cref="Record"/> is thread-safe so every layer can count concurrently while profiling.
/// </summary>
public sealed class ExpertPopularity
{
    private readonly long[][] _counts;
    private long _tokens;

    /// <summary>Zero counts for a <paramref name="layers"/> × <paramref name="experts"/> model.</summary>
    public ExpertPopularity(string model, int layers, int experts)
    {
        if (layers <= 0 || experts <= 0)
            throw new ArgumentException($"popularity needs layers > 0 and experts > 0, got {layers} × {experts}");
        Model = model;
        _counts = new long[layers][];
        for (int l = 0; l < layers; l++) _counts[l] = new long[experts];
    }

    public string Model { get; }
    public int Layers => _counts.Length;
    public int Experts => _counts[0].Length;

    /// <summary>Tokens that were run while counting (each chose top-k experts in every layer).</summary>
    public long Tokens => Interlocked.Read(ref _tokens);

    public long Count(int layer, int expert) => Interlocked.Read(ref _counts[layer][expert]);

    /// <summary>Counts one choice of <paramref name="expert"/> by the router of <paramref name="layer"/>.</summary>
    public void Record(int layer, int expert)
    {
        if ((uint)layer >= (uint)Layers || (uint)expert >= (uint)Experts)
            throw new ArgumentOutOfRangeException(nameof(layer), $"({layer}, {expert}) is outside {Layers} layers × {Experts} experts");
        Interlocked.Increment(ref _counts[layer][expert]);
    }

    /// <summary>Adds <paramref name="tokens"/> to the number of tokens counted.</summary>
    public void AddTokens(long tokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        Interlocked.Add(ref _tokens, tokens);
    }

    /// <summary>
    /// The fallback when no profile exists: every count equal, so placement reduces to its deterministic tie order.
    /// </summary>
    public static ExpertPopularity Uniform(int layers, int experts) => new("uniform", layers, experts);

    /// <summary>Throws <see cref="InvalidDataException"/> unless the counts were taken on a model of this size.</summary>
    public ExpertPopularity EnsureMatches(int layers, int experts, string source = "popularity")
    {
        if (layers != Layers || experts != Experts)
            throw new InvalidDataException($"{source}: counted for {Layers} layers × {Experts} experts (model '{Model}'), " +
                $"but this model has {layers} layers × {experts} experts; run `fiddler profile` for this model");
        return this;
    }

    /// <summary>Reads <paramref name="path"/> and checks its size against the model's.</summary>
    public static ExpertPopularity Load(string path, ModelShape shape) => Load(path).EnsureMatches(shape.Layers, shape.Experts, path);

    /// <summary>Reads and validates <paramref name="path"/>; errors are <see cref="InvalidDataException"/> naming the file.</summary>
    public static ExpertPopularity Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: popularity file not found", path);
        return FromJson(File.ReadAllText(path), path);
    }

    public void Save(string path) => File.WriteAllText(path, ToJson());

    /// <summary>The file text, one layer's counts per line so that a profile reads (and diffs) as a table.</summary>
    public string ToJson()
    {
        var rows = Enumerable.Range(0, Layers)
            .Select(l => "    [" + string.Join(", ", Enumerable.Range(0, Experts).Select(e => Count(l, e))) + "]");
        return $"{{\n  \"model\": {JsonSerializer.Serialize(Model)},\n  \"layers\": {Layers},\n  \"experts\": {Experts},\n" +
               $"  \"tokens\": {Tokens},\n  \"counts\": [\n{string.Join(",\n", rows)}\n  ]\n}}\n";
    }

    /// <summary>Largest count a file may hold (2^50: sums over a model's experts stay exact and far from overflow).</summary>
    public const long MaxCount = 1L << 50;

    public static ExpertPopularity FromJson(string json, string source = "popularity")
    {
        PopularityFile? f;
        try { f = JsonSerializer.Deserialize<PopularityFile>(json, Json); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not a popularity file ({e.Message})", e); }
        if (f is null) throw new InvalidDataException($"{source}: empty popularity file");
        if (f.Layers <= 0 || f.Experts <= 0)
            throw new InvalidDataException($"{source}: layers and experts must be > 0, got {f.Layers} × {f.Experts}");
        if (f.Tokens < 0) throw new InvalidDataException($"{source}: tokens must be >= 0, got {f.Tokens}");
        if (f.Counts is null || f.Counts.Length != f.Layers)
            throw new InvalidDataException($"{source}: counts has {f.Counts?.Length ?? 0} rows, expected one per layer ({f.Layers})");
        // Every row is checked before the table is allocated: a file claiming 2,000,000,000 experts per layer with
        // empty rows must be refused, not allocated. Counts stay far below overflow when summed or incremented.
        for (int l = 0; l < f.Layers; l++)
        {
            long[]? row = f.Counts[l];
            if (row is null || row.Length != f.Experts)
                throw new InvalidDataException($"{source}: counts[{l}] has {row?.Length ?? 0} entries, expected {f.Experts}");
            for (int e = 0; e < row.Length; e++)
                if (row[e] is < 0 or > MaxCount)
                    throw new InvalidDataException($"{source}: counts[{l}][{e}] is {row[e]}, outside 0..{MaxCount}{(row[e] < 0 ? " (negative)" : "")}");
        }
        var pop = new ExpertPopularity(f.Model ?? "", f.Layers, f.Experts);
        for (int l = 0; l < f.Layers; l++) f.Counts[l]!.CopyTo(pop._counts[l], 0);
        pop._tokens = f.Tokens;
        return pop;
    }

    private static readonly JsonSerializerOptions Json = new() { AllowTrailingCommas = true };

    private sealed record PopularityFile(
        [property: JsonPropertyName("model")] string? Model,
        [property: JsonPropertyName("layers")] int Layers,
        [property: JsonPropertyName("experts")] int Experts,
        [property: JsonPropertyName("tokens")] long Tokens,
        [property: JsonPropertyName("counts")] long[]?[]? Counts);
}

using System.Text.Json;
using System.Text.Json.Serialization;

namespace Fiddler.Kernels.Config;

/// <summary>
/// A Hugging Face Mixtral <c>config.json</c>. Reads both the Hub layout (<c>rope_theta</c>, <c>torch_dtype</c>)
/// and the transformers-5 layout (<c>rope_parameters.rope_theta</c>, <c>dtype</c>).
/// </summary>
public sealed record MixtralConfig
{
    [JsonPropertyName("architectures")] public string[]? Architectures { get; init; }
    [JsonPropertyName("model_type")] public string? ModelType { get; init; }
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; }
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; }
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeadsRaw { get; init; }
    [JsonPropertyName("head_dim")] public int? HeadDimRaw { get; init; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 4096;
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-5;
    [JsonPropertyName("rope_theta")] public double? RopeThetaRaw { get; init; }
    [JsonPropertyName("rope_parameters")] public RopeParameters? RopeParameters { get; init; }
    [JsonPropertyName("rope_scaling")] public JsonElement? RopeScaling { get; init; }
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }
    [JsonPropertyName("num_local_experts")] public int NumLocalExperts { get; init; }
    [JsonPropertyName("num_experts_per_tok")] public int NumExpertsPerTok { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }
    [JsonPropertyName("torch_dtype")] public string? TorchDtype { get; init; }
    [JsonPropertyName("dtype")] public string? Dtype { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id")] public JsonElement? EosTokenIdRaw { get; init; }

    public int NumKeyValueHeads => NumKeyValueHeadsRaw ?? NumAttentionHeads;
    public int HeadDim => HeadDimRaw ?? HiddenSize / NumAttentionHeads;
    public double RopeTheta => RopeParameters?.RopeTheta ?? RopeThetaRaw ?? 1e6;
    /// <summary>The checkpoint's own dtype name ("bfloat16", "float32"...), whichever field carries it.</summary>
    public string? CheckpointDtype => Dtype ?? TorchDtype;

    /// <summary>EOS ids: HF allows one int or a list.</summary>
    public IReadOnlyList<int> EosTokenIds => EosTokenIdRaw switch
    {
        null or { ValueKind: JsonValueKind.Null } => [],
        { ValueKind: JsonValueKind.Number } e => [TokenId(e)],
        { ValueKind: JsonValueKind.Array } a => a.EnumerateArray().Select(TokenId).ToArray(),
        _ => throw new ModelConfigException("eos_token_id must be an integer or a list of integers"),
    };

    private static int TokenId(JsonElement e) => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) ? id
        : throw new ModelConfigException($"eos_token_id: '{e}' is not an integer token id");

    public static MixtralConfig Load(string path)
    {
        if (!File.Exists(path)) throw new ModelConfigException($"{path}: config.json not found");
        MixtralConfig? config;
        try { config = JsonSerializer.Deserialize<MixtralConfig>(File.ReadAllText(path)); }
        catch (JsonException e) { throw new ModelConfigException($"{path}: not a valid config.json ({e.Message})", e); }
        if (config is null) throw new ModelConfigException($"{path}: config.json is empty");
        config.Validate(path);
        return config;
    }

    /// <summary>Throws <see cref="ModelConfigException"/> naming the field for anything this engine cannot run.</summary>
    public void Validate(string source = "config")
    {
        bool mixtral = ModelType == "mixtral" || (Architectures?.Contains("MixtralForCausalLM") ?? false);
        if (!mixtral)
            throw new ModelConfigException($"{source}: unsupported architecture " +
                $"'{string.Join(",", Architectures ?? [])}' (model_type '{ModelType}'); Fiddler runs MixtralForCausalLM");
        void Positive(string name, long v) { if (v <= 0) throw new ModelConfigException($"{source}: {name} must be > 0, got {v}"); }
        Positive("vocab_size", VocabSize); Positive("hidden_size", HiddenSize); Positive("intermediate_size", IntermediateSize);
        Positive("num_hidden_layers", NumHiddenLayers); Positive("num_attention_heads", NumAttentionHeads);
        Positive("num_key_value_heads", NumKeyValueHeads); Positive("num_local_experts", NumLocalExperts);
        Positive("num_experts_per_tok", NumExpertsPerTok); Positive("max_position_embeddings", MaxPositionEmbeddings);
        Positive("head_dim", HeadDim);
        if (HeadDimRaw is null && HiddenSize % NumAttentionHeads != 0)
            throw new ModelConfigException($"{source}: hidden_size {HiddenSize} is not divisible by num_attention_heads {NumAttentionHeads}");
        if (HeadDim % 2 != 0) throw new ModelConfigException($"{source}: head_dim {HeadDim} must be even for rotary embeddings");
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new ModelConfigException($"{source}: num_attention_heads {NumAttentionHeads} is not a multiple of num_key_value_heads {NumKeyValueHeads}");
        if (NumExpertsPerTok > NumLocalExperts)
            throw new ModelConfigException($"{source}: num_experts_per_tok {NumExpertsPerTok} exceeds num_local_experts {NumLocalExperts}");
        if (HiddenAct != "silu") throw new ModelConfigException($"{source}: hidden_act '{HiddenAct}' is not supported (only silu)");
        if (SlidingWindow is <= 0) throw new ModelConfigException($"{source}: sliding_window must be > 0 or null, got {SlidingWindow}");
        if (RmsNormEps <= 0 || double.IsNaN(RmsNormEps)) throw new ModelConfigException($"{source}: rms_norm_eps must be > 0");
        if (RopeTheta <= 0) throw new ModelConfigException($"{source}: rope_theta must be > 0");
        string? ropeType = RopeParameters?.RopeType;
        if (ropeType is not (null or "default"))
            throw new ModelConfigException($"{source}: rope_type '{ropeType}' is not supported (only default)");
        if (RopeScaling is { ValueKind: not JsonValueKind.Null } s && !(s.ValueKind == JsonValueKind.Object &&
                s.TryGetProperty("rope_type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "default"))
            throw new ModelConfigException($"{source}: rope_scaling is not supported");
        IReadOnlyList<int> eos;
        try { eos = EosTokenIds; }
        catch (ModelConfigException e) { throw new ModelConfigException($"{source}: {e.Message}", e); }
        if (eos.Any(id => id < 0 || id >= VocabSize))
            throw new ModelConfigException($"{source}: eos_token_id outside the vocabulary");
        // Every weight's element count must be a sane 64-bit number, and each row count an int (the modules' sizes).
        void Fits(string what, long a, long b)
        {
            if (a * (double)b > int.MaxValue)
                throw new ModelConfigException($"{source}: {what} = {a} × {b} is too large (over {int.MaxValue})");
        }
        Fits("num_attention_heads × head_dim", NumAttentionHeads, HeadDim);
        Fits("num_key_value_heads × head_dim", NumKeyValueHeads, HeadDim);
        Fits("num_local_experts × intermediate_size", NumLocalExperts, 2L * IntermediateSize);
    }

    /// <summary>Mixtral-8x7B-v0.1's shape, for benchmarks and shape tests without a checkpoint.</summary>
    public static MixtralConfig Mixtral8x7B { get; } = new()
    {
        Architectures = ["MixtralForCausalLM"], ModelType = "mixtral", VocabSize = 32000, HiddenSize = 4096,
        IntermediateSize = 14336, NumHiddenLayers = 32, NumAttentionHeads = 32, NumKeyValueHeadsRaw = 8,
        MaxPositionEmbeddings = 32768, RmsNormEps = 1e-5, RopeThetaRaw = 1e6, NumLocalExperts = 8,
        NumExpertsPerTok = 2, TorchDtype = "bfloat16", BosTokenId = 1,
    };

    /// <summary>Named configs accepted by <c>--config</c>.</summary>
    public static MixtralConfig Named(string name) => name.ToLowerInvariant() switch
    {
        "mixtral-8x7b" => Mixtral8x7B,
        _ => throw new ModelConfigException($"unknown config name '{name}' (known: mixtral-8x7b)"),
    };
}

public sealed record RopeParameters
{
    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; init; }
    [JsonPropertyName("rope_type")] public string? RopeType { get; init; }
}

/// <summary>A config.json this engine cannot run, with the reason.</summary>
public sealed class ModelConfigException(string message, Exception? inner = null) : Exception(message, inner);

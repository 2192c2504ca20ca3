using System.Text.RegularExpressions;
using Fiddler.Kernels.Config;

namespace Fiddler.Kernels.Loading;

/// <summary>
/// Where one model parameter's values live in a checkpoint: a tensor, optionally one slab of its first dimension
/// (<see cref="Index"/>) and a row range of the next. Slices are always contiguous, so loading stays one memcpy.
/// </summary>
/// <param name="Leading">For a fused tensor: the sizes its leading dimensions must have ([E, 2I] for gate_up_proj, [E, H]
/// for down_proj), so a fused tensor with extra slabs or rows is refused rather than partly read.</param>
public sealed record WeightSource(string Name, long? Index = null, long RowStart = 0, long? RowCount = null, long[]? Leading = null);

/// <summary>
/// The one table between checkpoint names and this engine's parameters. Modules name their state as HF's on-disk
/// Mixtral layout does (<c>model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight</c>), so the first candidate is
/// the name itself; the others cover the fused layout transformers 5 holds in memory
/// (<c>mlp.experts.gate_up_proj</c> [E, 2I, H] with gate rows first, <c>mlp.experts.down_proj</c> [E, H, I],
/// <c>mlp.gate</c>) and tied embeddings. Experts are kept per expert at load time: placement moves them one by one.
/// </summary>
public static partial class WeightMap
{
    [GeneratedRegex(@"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")]
    private static partial Regex ExpertWeight();

    [GeneratedRegex(@"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$")]
    private static partial Regex RouterWeight();

    /// <summary>Candidate sources for a parameter, most direct first.</summary>
    public static IReadOnlyList<WeightSource> Candidates(string parameter, MixtralConfig config)
    {
        var list = new List<WeightSource> { new(parameter) };
        if (ExpertWeight().Match(parameter) is { Success: true } m)
        {
            string layer = m.Groups[1].Value;
            long expert = long.Parse(m.Groups[2].Value);
            long i = config.IntermediateSize;
            string fused = $"model.layers.{layer}.mlp.experts.";
            long experts = config.NumLocalExperts;
            list.Add(m.Groups[3].Value switch
            {
                "w1" => new WeightSource(fused + "gate_up_proj", expert, 0, i, [experts, 2 * i]),
                "w3" => new WeightSource(fused + "gate_up_proj", expert, i, i, [experts, 2 * i]),
                _ => new WeightSource(fused + "down_proj", expert, Leading: [experts, config.HiddenSize]),
            });
        }
        else if (RouterWeight().Match(parameter) is { Success: true } r)
        {
            list.Add(new WeightSource($"model.layers.{r.Groups[1].Value}.mlp.gate.weight"));
        }
        else if (parameter == "lm_head.weight" && config.TieWordEmbeddings)
        {
            list.Add(new WeightSource("model.embed_tokens.weight"));
        }
        return list;
    }

    [GeneratedRegex(@"^model\.layers\.(\d+)\.")]
    private static partial Regex LayerTensor();

    [GeneratedRegex(@"\.experts\.(\d+)\.")]
    private static partial Regex ExpertTensor();

    /// <summary>The layer a checkpoint tensor belongs to (<c>model.layers.{i}.…</c>), null for the others.</summary>
    public static long? LayerOf(string checkpointName) =>
        LayerTensor().Match(checkpointName) is { Success: true } m && long.TryParse(m.Groups[1].Value, out long i) ? i : null;

    /// <summary>The expert a per-expert checkpoint tensor belongs to (<c>….experts.{e}.…</c>), null for the others.</summary>
    public static long? ExpertOf(string checkpointName) =>
        ExpertTensor().Match(checkpointName) is { Success: true } m && long.TryParse(m.Groups[1].Value, out long e) ? e : null;

    /// <summary>Checkpoint tensors that carry no parameter and are fine to skip (HF writes rotary buffers in some versions).</summary>
    public static bool IsIgnorable(string checkpointName) => checkpointName.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal);
}

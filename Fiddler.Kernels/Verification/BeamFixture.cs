using System.Text.Json;

namespace Fiddler.Kernels.Verification;

/// <summary>
/// Transformers' beam search on a fixture model (<c>Fixtures/make_beam_fixtures.py</c> writes <see cref="FileName"/>):
/// per prompt, the <c>num_beams</c> hypotheses of <c>new_tokens</c> tokens in HF's order, and each one's summed
/// log-probability (<c>manual_scores</c>, recomputed from the model's fp32 logits). Field names as in the file.
/// </summary>
public sealed record BeamFixture(int num_beams, int new_tokens, BeamFixture.Prompt[] prompts)
{
    public const string FileName = "beam.json";

    public sealed record Prompt(int[] prompt_ids, int[][] hf_sequences, double[] manual_scores);

    /// <summary>The model folder's beam fixture, or null when it has none.</summary>
    public static BeamFixture? LoadIfPresent(string modelDir)
    {
        string path = Path.Combine(modelDir, FileName);
        if (!File.Exists(path)) return null;
        var beams = JsonSerializer.Deserialize<BeamFixture>(File.ReadAllText(path))
            ?? throw new InvalidDataException($"{path}: empty beam fixture");
        if (beams.num_beams < 1 || beams.new_tokens < 1 || beams.prompts is null || beams.prompts.Length == 0
            || beams.prompts.Any(p => p.prompt_ids is null || p.hf_sequences is null || p.manual_scores is null || p.hf_sequences.Length != p.manual_scores.Length))
            throw new InvalidDataException($"{path}: a beam fixture needs num_beams, new_tokens and prompts with prompt_ids, hf_sequences and one manual_score per sequence");
        return beams;
    }
}

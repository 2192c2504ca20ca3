namespace Fiddler.Kernels.Sampling;

/// <summary>Per-request sampling settings.</summary>
/// <param name="Temperature">Softmax temperature; 0 means greedy (argmax). Must be finite and ≥ 0.</param>
/// <param name="TopK">Keep only the K most likely tokens (ties with the K-th are kept, as in HF); 0 disables.</param>
/// <param name="TopP">Nucleus sampling: keep the smallest set of most likely tokens whose probability sum
/// reaches TopP (at least one token); 1 disables. Must be in (0, 1].</param>
/// <param name="Seed">Seed of the sampler's own PRNG; null picks a random seed (see <see cref="Sampler.Seed"/>).</param>
public sealed record SamplingOptions(float Temperature = 1, int TopK = 0, float TopP = 1, ulong? Seed = null)
{
    /// <summary>Greedy decoding (temperature 0).</summary>
    public static SamplingOptions Greedy { get; } = new(Temperature: 0);

    /// <summary>Whether these options select the argmax token.</summary>
    public bool IsGreedy => Temperature == 0;

    /// <summary>Throws <see cref="ArgumentException"/> when a setting is out of range.</summary>
    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0)
        {
            throw new Generation.GenerationRequestException($"temperature must be a finite number >= 0 (0 = greedy), got {Temperature}.", nameof(Temperature));
        }
        if (TopK < 0)
        {
            throw new Generation.GenerationRequestException($"top_k must be >= 0 (0 = disabled), got {TopK}.", nameof(TopK));
        }
        if (!(TopP > 0 && TopP <= 1))
        {
            throw new Generation.GenerationRequestException($"top_p must be in (0, 1], got {TopP}.", nameof(TopP));
        }
    }
}

using Fiddler.Kernels.Sampling;

namespace Fiddler.Kernels.Generation;

/// <summary>What to generate. Validated by <see cref="Validate"/> before any work starts.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 128;
    public SamplingOptions Sampling { get; init; } = new(Temperature: 0);
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    public bool StopOnEos { get; init; } = true;
    /// <summary>How many top log-probabilities to report per step (0: none).</summary>
    public int TopLogprobs { get; init; }

    public void Validate()
    {
        if (MaxNewTokens < 1) throw new GenerationRequestException($"max tokens must be ≥ 1, got {MaxNewTokens}");
        if (TopLogprobs is < 0 or > 20) throw new GenerationRequestException($"top logprobs must be in 0..20, got {TopLogprobs}");
        if (StopStrings.Any(string.IsNullOrEmpty)) throw new GenerationRequestException("stop strings must be non-empty");
        Sampling.Validate();
    }
}

public enum FinishReason { Length, Eos, Stop, Cancelled }

/// <summary>One generated token; <see cref="Text"/> is the newly printable text (may be empty mid-character).</summary>
public sealed record GeneratedToken(int Id, string Text, float Logprob, IReadOnlyList<(int Id, float Logprob)> Top);

/// <summary>Totals of one generation.</summary>
public sealed record GenerationResult(int[] PromptIds, int[] Tokens, string Text, FinishReason Finish,
    TimeSpan Prefill, TimeSpan Decode)
{
    /// <summary>Decode tokens per second (tokens after the first, over the time spent producing them).</summary>
    public double DecodeTokensPerSecond => Tokens.Length > 1 && Decode > TimeSpan.Zero ? (Tokens.Length - 1) / Decode.TotalSeconds : 0;
}

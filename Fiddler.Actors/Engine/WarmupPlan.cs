using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Config;

namespace Fiddler.Actors.Engine;

/// <summary>
/// What an offloading engine runs at start-up before it takes requests, and why: the router learns each lane's speed
/// online, per decode and per batch size (<see cref="ExpertRouter.BatchSizes"/>). Until a size has run once, its layers
/// are planned with another size's factors, and the first prompt of a new size came out 5-20 % slower than the next one
/// of that size (H100 host, Mixtral at 24 GiB, BENCHMARKS.md session 10). One prompt per batch size, then a few decode
/// steps, teaches every regime before the first request (llama.cpp and vLLM also run a forward at start-up).
/// </summary>
public static class WarmupPlan
{
    /// <summary>Decode steps after the first prompt: 8 × the model's layers teach the decode factors (rate 0.05) to within
    /// a few per cent of what they would settle at.</summary>
    public const int DecodeSteps = 8;

    /// <summary>
    /// Prompt lengths, shortest first: for each batch size, one whose layers give each chosen expert, on average, half
    /// the size's largest batch (the last, unbounded size: twice the bound before it), i.e. tokens × top-k / experts.
    /// For Mixtral (8 experts, top-2): 32, 128 and 512 tokens. Each leaves room in <paramref name="contextTokens"/> (and
    /// the model's positions) for the token it generates and <see cref="DecodeSteps"/> more; lengths that would not fit
    /// are shortened, and repeats dropped. Empty when not even one prompt token fits: then there is no warm-up.
    /// </summary>
    public static int[] PromptLengths(MixtralConfig config, int contextTokens)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.NumLocalExperts < 1 || config.NumExpertsPerTok < 1)
            throw new ArgumentException($"experts {config.NumLocalExperts} and top-k {config.NumExpertsPerTok} must be positive");
        int longest = Math.Min(contextTokens, config.MaxPositionEmbeddings) - DecodeSteps - 1;
        var lengths = new List<int>();
        int previous = 0;
        foreach (int bound in ExpertRouter.BatchSizes)
        {
            int perExpert = bound == int.MaxValue ? 2 * previous : bound / 2;
            int tokens = (int)Math.Min(longest, Math.Ceiling((double)perExpert * config.NumLocalExperts / config.NumExpertsPerTok));
            if (tokens >= 1 && !lengths.Contains(tokens)) lengths.Add(tokens);
            previous = bound;
        }
        return [.. lengths];
    }

    /// <summary>A warm-up prompt: <paramref name="length"/> token ids drawn from the vocabulary (past its first 3, the
    /// usual special tokens), the same for the same arguments.</summary>
    public static int[] Prompt(int length, int vocabSize, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(length, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 4);
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => rng.Next(3, vocabSize))];
    }
}

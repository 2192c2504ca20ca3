using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Sampling;

/// <summary>
/// Picks the next token from a logits vector: greedy argmax, or temperature → top-k → top-p (HF's order)
/// followed by a draw from the sampler's own seeded PRNG.
/// </summary>
/// <remarks>
/// The [V] logits are copied to the CPU as float32 and all filtering and sampling is done there in managed code
/// (double precision, deterministic tie-breaking by lower id), so a given seed and given logits values produce the
/// same tokens whatever device and dtype the logits came from and on every platform. One sampler holds one PRNG
/// stream: use one instance per request/sequence. Not thread-safe.
/// </remarks>
public sealed class Sampler
{
    private readonly Xoshiro256StarStar _rng;
    // Scratch reused from token to token: at a 32000-token vocabulary each is a large-object-heap array (≥ 85 KB), and
    // allocating them per token brought full collections into decoding.
    private double[] _weights = [];
    private float[] _sorted = [];
    private bool[] _kept = [];
    private readonly List<Candidate> _candidates = [];

    /// <exception cref="ArgumentException">Invalid options.</exception>
    public Sampler(SamplingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
        Seed = options.Seed ?? BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(sizeof(ulong)));
        _rng = new Xoshiro256StarStar(Seed);
    }

    public SamplingOptions Options { get; }

    /// <summary>The seed in use (the options' seed, or the random one picked when it was null).</summary>
    public ulong Seed { get; }

    /// <summary>Samples a token id from <paramref name="logits"/>: shape [V] (or [1, V], [1, 1, V]...),
    /// any floating dtype, any device. The tensor is not modified or disposed.</summary>
    public int Sample(Tensor logits) => Sample(ToCpuFloat32(logits));

    /// <summary>Samples a token id from logits already on the CPU.</summary>
    /// <exception cref="ArgumentException">Empty logits, NaN, or no token with a finite or +inf logit.</exception>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty)
        {
            throw new ArgumentException("Logits are empty.", nameof(logits));
        }
        if (Options.IsGreedy)
        {
            return ArgMax(logits);
        }

        int v = logits.Length;
        float max = MaxChecked(logits);
        if (_weights.Length != v) _weights = new double[v];
        var weights = _weights;
        if (float.IsPositiveInfinity(max))
        {
            // Degenerate: all mass on the +inf entries, equally.
            for (int i = 0; i < v; i++)
            {
                weights[i] = float.IsPositiveInfinity(logits[i]) ? 1 : 0;
            }
        }
        else
        {
            double invT = 1.0 / Options.Temperature;
            for (int i = 0; i < v; i++)
            {
                // (l - max) / T <= 0: no overflow for any T > 0; -inf logits get weight 0.
                weights[i] = Math.Exp(((double)logits[i] - max) * invT);
            }
        }

        // top-k: drop tokens whose logit is below the k-th largest (ties with it stay, as in HF's TopKLogitsWarper).
        int k = Options.TopK;
        if (k > 0 && k < v)
        {
            float kth = KthLargest(logits, k, ref _sorted);
            for (int i = 0; i < v; i++)
            {
                if (logits[i] < kth)
                {
                    weights[i] = 0;
                }
            }
        }

        if (Options.TopP < 1)
        {
            ApplyTopP(weights, Options.TopP, _candidates, ref _kept);
        }

        double total = 0;
        int last = -1;
        for (int i = 0; i < v; i++)
        {
            if (weights[i] > 0)
            {
                total += weights[i];
                last = i;
            }
        }
        if (last < 0)
        {
            throw new ArgumentException("No token has a sampleable logit.", nameof(logits));
        }

        double u = _rng.NextDouble() * total;
        double acc = 0;
        for (int i = 0; i < v; i++)
        {
            if (weights[i] > 0)
            {
                acc += weights[i];
                if (u < acc)
                {
                    return i;
                }
            }
        }
        return last; // rounding: u landed at the very top
    }

    /// <summary>The <paramref name="k"/> most likely tokens under log-softmax of the raw logits (no temperature or
    /// filtering), most likely first (ties: lower id first). k is clamped to V.</summary>
    public (int[] ids, float[] logprobs) TopLogprobs(Tensor logits, int k) => TopLogprobs(ToCpuFloat32(logits), k);

    /// <inheritdoc cref="TopLogprobs(Tensor, int)"/>
    public (int[] ids, float[] logprobs) TopLogprobs(ReadOnlySpan<float> logits, int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        if (logits.IsEmpty)
        {
            throw new ArgumentException("Logits are empty.", nameof(logits));
        }
        float max = MaxChecked(logits);
        if (float.IsPositiveInfinity(max))
        {
            throw new ArgumentException("Logits contain +inf; log-softmax is undefined.", nameof(logits));
        }

        double sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            sum += Math.Exp((double)logits[i] - max);
        }
        double logSumExp = max + Math.Log(sum);

        k = Math.Min(k, logits.Length);
        var ids = new int[k];
        var values = new float[k];
        int n = 0;
        for (int i = 0; i < logits.Length && k > 0; i++)
        {
            float x = logits[i];
            if (n == k && !(x > values[n - 1]))
            {
                continue; // not better than the current k-th (equal: the lower id already there wins)
            }
            int pos = n == k ? k - 1 : n++;
            while (pos > 0 && x > values[pos - 1])
            {
                values[pos] = values[pos - 1];
                ids[pos] = ids[pos - 1];
                pos--;
            }
            values[pos] = x;
            ids[pos] = i;
        }

        var logprobs = new float[k];
        for (int j = 0; j < k; j++)
        {
            logprobs[j] = (float)(values[j] - logSumExp);
        }
        return (ids, logprobs);
    }

    /// <summary>Copies logits of shape [V] (or [1, ..., 1, V]) from any device/dtype into a CPU float32 array.</summary>
    public static float[] ToCpuFloat32(Tensor logits)
    {
        var values = new float[CheckedLength(logits)];
        ToCpuFloat32(logits, values);
        return values;
    }

    /// <summary>As <see cref="ToCpuFloat32(Tensor)"/>, into <paramref name="values"/> (exactly V long), which a decode loop
    /// can reuse from token to token.</summary>
    public static void ToCpuFloat32(Tensor logits, float[] values)
    {
        ArgumentNullException.ThrowIfNull(values);
        long n = CheckedLength(logits);
        if (values.Length != n) throw new ArgumentException($"Expected a buffer of {n} values, got {values.Length}.", nameof(values));
        using var scope = torch.NewDisposeScope();
        var cpu = logits.detach().reshape(n).cpu().to_type(ScalarType.Float32).contiguous();
        cpu.data<float>().CopyTo(values);
    }

    private static long CheckedLength(Tensor logits)
    {
        ArgumentNullException.ThrowIfNull(logits);
        using var scope = torch.NewDisposeScope();
        long n = logits.numel();
        if (logits.dim() == 0 || n != logits.size(-1))
        {
            throw new ArgumentException(
                $"Expected logits of shape [V] (or [1, V]), got [{string.Join(", ", logits.shape)}].", nameof(logits));
        }
        if (!logits.is_floating_point())
        {
            throw new ArgumentException($"Expected floating-point logits, got {logits.dtype}.", nameof(logits));
        }
        return n;
    }

    /// <summary>Index of the largest logit (first one on ties).</summary>
    private static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        float bestValue = logits[0];
        if (float.IsNaN(bestValue))
        {
            throw new ArgumentException("Logits contain NaN.", nameof(logits));
        }
        for (int i = 1; i < logits.Length; i++)
        {
            float x = logits[i];
            if (x > bestValue)
            {
                best = i;
                bestValue = x;
            }
            else if (float.IsNaN(x))
            {
                throw new ArgumentException("Logits contain NaN.", nameof(logits));
            }
        }
        return best;
    }

    /// <summary>Max of the logits; throws on NaN or when all are -inf.</summary>
    private static float MaxChecked(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity;
        foreach (float x in logits)
        {
            if (float.IsNaN(x))
            {
                throw new ArgumentException("Logits contain NaN.", nameof(logits));
            }
            if (x > max)
            {
                max = x;
            }
        }
        if (float.IsNegativeInfinity(max))
        {
            throw new ArgumentException("All logits are -inf.", nameof(logits));
        }
        return max;
    }

    /// <summary>The k-th largest logit (1-based k, 0 &lt; k &lt; V); <paramref name="scratch"/>: a reusable sort buffer.</summary>
    private static float KthLargest(ReadOnlySpan<float> logits, int k, ref float[] scratch)
    {
        if (k > 64)
        {
            if (scratch.Length != logits.Length) scratch = new float[logits.Length];
            logits.CopyTo(scratch);
            Array.Sort(scratch);
            return scratch[scratch.Length - k];
        }

        // Keep the k largest seen so far, sorted descending; cheap for the usual small k.
        Span<float> top = stackalloc float[k];
        int n = 0;
        foreach (float x in logits)
        {
            if (n == k && !(x > top[k - 1]))
            {
                continue;
            }
            int pos = n == k ? k - 1 : n++;
            while (pos > 0 && x > top[pos - 1])
            {
                top[pos] = top[pos - 1];
                pos--;
            }
            top[pos] = x;
        }
        return top[k - 1];
    }

    /// <summary>Zeroes the weights outside the nucleus: the smallest set of most likely tokens (ties: lower id
    /// first) whose probability sum is ≥ p; at least one token is kept.</summary>
    /// <remarks>Only tokens above a threshold are sorted: the tokens with weight ≥ t form a prefix of the sorted
    /// order, so once their sum reaches the target the nucleus lies inside them. The threshold starts at
    /// max·1e-4 and drops until that holds (at worst t = 0, all tokens). Same result as sorting everything.</remarks>
    private static void ApplyTopP(double[] weights, float p, List<Candidate> candidates, ref bool[] kept)
    {
        double total = 0;
        double maxW = 0;
        foreach (double w in weights)
        {
            total += w;
            maxW = Math.Max(maxW, w);
        }
        double target = p * total;

        for (double t = maxW * 1e-4; ; t = t > 1e-300 ? t * 1e-4 : 0)
        {
            candidates.Clear();
            double sum = 0;
            for (int i = 0; i < weights.Length; i++)
            {
                double w = weights[i];
                if (w > 0 && w >= t)
                {
                    candidates.Add(new Candidate(w, i));
                    sum += w;
                }
            }
            if (sum >= target || t == 0)
            {
                break;
            }
        }
        candidates.Sort();

        double cum = 0;
        int keep = 0;
        while (keep < candidates.Count)
        {
            cum += candidates[keep].Weight;
            keep++;
            if (cum >= target)
            {
                break;
            }
        }

        if (kept.Length != weights.Length) kept = new bool[weights.Length];
        else Array.Clear(kept);
        for (int j = 0; j < keep; j++)
        {
            kept[candidates[j].Id] = true;
        }
        for (int i = 0; i < weights.Length; i++)
        {
            if (!kept[i])
            {
                weights[i] = 0;
            }
        }
    }

    /// <summary>Sort order: weight descending, then id ascending (a total order, so sorting is deterministic).</summary>
    private readonly record struct Candidate(double Weight, int Id) : IComparable<Candidate>
    {
        public int CompareTo(Candidate other)
        {
            int c = other.Weight.CompareTo(Weight);
            return c != 0 ? c : Id.CompareTo(other.Id);
        }
    }
}

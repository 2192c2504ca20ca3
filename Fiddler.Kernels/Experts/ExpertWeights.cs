namespace Fiddler.Kernels.Experts;

/// <summary>Element type of an expert's weight matrices in CPU memory.</summary>
public enum WeightType
{
    BF16,
    F16,
    F32,
}

/// <summary>
/// One Mixtral expert's weights in CPU memory, row-major as PyTorch stores them (out_features × in_features):
/// <c>w1</c> (gate) and <c>w3</c> (up) are <c>[Intermediate, Hidden]</c>, <c>w2</c> (down) is <c>[Hidden, Intermediate]</c>.
/// The memory is the caller's and must stay valid (and unmoved) while a kernel runs.
/// </summary>
public readonly unsafe struct ExpertWeights
{
    /// <param name="w2Stride">Elements between consecutive rows of w2 (default: <paramref name="intermediate"/>). Larger when
    /// the weights are a slice of a bigger expert's intermediate rows: w1/w3 rows [a, a+k) and w2 columns [a, a+k) of an
    /// expert with I rows are (w1 + a·H, w3 + a·H, w2 + a) with intermediate k and w2 stride I. The expert's output is the
    /// sum of its slices' outputs (w2 is linear in the intermediate activations), which is how a CPU/GPU split works.</param>
    public ExpertWeights(void* w1, void* w3, void* w2, int hidden, int intermediate, WeightType type, int w2Stride = 0)
    {
        W1 = w1;
        W3 = w3;
        W2 = w2;
        Hidden = hidden;
        Intermediate = intermediate;
        Type = type;
        W2Stride = w2Stride == 0 ? intermediate : w2Stride;
    }

    public void* W1 { get; }
    public void* W3 { get; }
    public void* W2 { get; }
    public int Hidden { get; }
    public int Intermediate { get; }
    public WeightType Type { get; }
    public int W2Stride { get; }

    public int ElementBytes => Type switch { WeightType.BF16 or WeightType.F16 => 2, _ => 4 };

    /// <summary>Bytes of all three matrices: what one pass of the kernel must read from memory.</summary>
    public long Bytes => 3L * Hidden * Intermediate * ElementBytes;
}

/// <summary>
/// One expert's share of a layer: <paramref name="tokens"/> activation rows <c>x [tokens, Hidden]</c> (fp32, row-major,
/// contiguous) in, <c>y [tokens, Hidden]</c> (fp32) out. <c>y</c> is overwritten. Every job's <c>x</c> is copied before
/// any <c>y</c> is written, so <c>y</c> may alias <c>x</c> (in place).
/// </summary>
public readonly unsafe struct ExpertJob(ExpertWeights weights, float* x, float* y, int tokens)
{
    public ExpertWeights Weights { get; } = weights;
    public float* X { get; } = x;
    public float* Y { get; } = y;
    public int Tokens { get; } = tokens;
}

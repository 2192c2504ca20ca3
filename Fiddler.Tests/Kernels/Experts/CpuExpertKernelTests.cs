using Xunit;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Experts;

public sealed unsafe class CpuExpertKernelTests : IDisposable
{
    private readonly CpuWorkerPool _pool = new(threads: 3);

    public void Dispose()
    {
        _pool.Dispose();
        CpuExpertKernel.ForceIsa = null;
    }

    public static TheoryData<CpuIsa, int> IsaAndTokens()
    {
        var data = new TheoryData<CpuIsa, int>();
        foreach (var isa in new[] { CpuIsa.Scalar, CpuIsa.Avx2, CpuIsa.Avx512 })
            foreach (int t in new[] { 1, 2, 5, 16 }) data.Add(isa, t);
        return data;
    }

    [Theory]
    [MemberData(nameof(IsaAndTokens))]
    public void SwiGlu_Bf16Weights_MatchesTorchOnRoundedWeights(CpuIsa isa, int tokens)
    {
        if (!Supported(isa)) return;
        CpuExpertKernel.ForceIsa = isa;
        AssertMatchesReference(hidden: 256, intermediate: 384, tokens, ScalarType.BFloat16);
    }

    [Theory]
    [InlineData(CpuIsa.Scalar)]
    [InlineData(CpuIsa.Avx2)]
    [InlineData(CpuIsa.Avx512)]
    public void SwiGlu_F16AndF32Weights_MatchTorch(CpuIsa isa)
    {
        if (!Supported(isa)) return;
        CpuExpertKernel.ForceIsa = isa;
        AssertMatchesReference(256, 384, 5, ScalarType.Float16);
        AssertMatchesReference(256, 384, 5, ScalarType.Float32);
    }

    [Theory]
    [InlineData(CpuIsa.Scalar)]
    [InlineData(CpuIsa.Avx2)]
    [InlineData(CpuIsa.Avx512)]
    public void SwiGlu_SizesNotMultiplesOfVectorBlocks_MatchTorch(CpuIsa isa)
    {
        if (!Supported(isa)) return;
        CpuExpertKernel.ForceIsa = isa;
        // Hidden 200 and 1050 leave K tails for every width; intermediate 75 leaves an odd gate row and a K tail in w2;
        // 17 tokens cross the 16-token pass; 1050 crosses a 1024-element K block.
        AssertMatchesReference(200, 75, 3, ScalarType.BFloat16);
        AssertMatchesReference(1050, 75, 17, ScalarType.BFloat16);
        AssertMatchesReference(200, 75, 3, ScalarType.Float16);
        AssertMatchesReference(200, 75, 3, ScalarType.Float32);
    }

    [Fact]
    public void SwiGlu_F16SpecialValues_ConvertExactlyInEveryPath()
    {
        // Subnormals, the largest finite, signed zeros: the vector paths' rebias trick must equal Half → float.
        var values = new float[] { 6e-8f, -6e-8f, 3.05e-5f, 65504f, -65504f, -0f, 0f, 1f, -2.5f, 1e-3f };
        using var scope = NewDisposeScope();
        var w = tensor(Enumerable.Range(0, 64 * 64).Select(i => values[i % values.Length] * (i % 7 == 0 ? 1f : 1e-3f)).ToArray())
            .reshape(64, 64).to(ScalarType.Float16);
        var x = randn(2, 64);
        Tensor? first = null;
        foreach (var isa in new[] { CpuIsa.Scalar, CpuIsa.Avx2, CpuIsa.Avx512 }.Where(Supported))
        {
            CpuExpertKernel.ForceIsa = isa;
            var y = Run(x, w, w, w, ScalarType.Float16);
            Assert.False(y.isnan().any().item<bool>());
            if (first is null) first = y;
            else Assert.True(MaxRelativeError(y, first) <= 1e-5, $"{isa} differs from scalar");
        }
    }

    [Fact]
    public void SwiGlu_ScalarAndVectorPaths_Agree()
    {
        using var scope = NewDisposeScope();
        var (x, w1, w3, w2) = RandomExpert(512, 768, 7, ScalarType.BFloat16);
        CpuExpertKernel.ForceIsa = CpuIsa.Scalar;
        var scalar = Run(x, w1, w3, w2, ScalarType.BFloat16);
        CpuExpertKernel.ForceIsa = null;
        var best = Run(x, w1, w3, w2, ScalarType.BFloat16);
        Assert.True(MaxRelativeError(best, scalar) <= 1e-5, $"{CpuExpertKernel.BestIsa} vs scalar");
    }

    [Fact]
    public void SwiGluMany_MixedExpertsAndTokenCounts_EqualsSeparateCalls()
    {
        using var scope = NewDisposeScope();
        var experts = new[] { (5, ScalarType.BFloat16), (0, ScalarType.BFloat16), (1, ScalarType.Float16), (16, ScalarType.Float32), (3, ScalarType.BFloat16) }
            .Select(e => (Tensors: RandomExpert(256, 384, e.Item1, e.Item2), Type: e.Item2)).ToArray();
        var separate = experts.Select(e => Run(e.Tensors.x, e.Tensors.w1, e.Tensors.w3, e.Tensors.w2, e.Type)).ToArray();

        var outputs = experts.Select(e => full(e.Tensors.x.shape, float.NaN)).ToArray();
        var jobs = experts.Select((e, i) => new ExpertJob(Weights(e.Tensors.w1, e.Tensors.w3, e.Tensors.w2, e.Type),
            Ptr(e.Tensors.x), Ptr(outputs[i]), (int)e.Tensors.x.shape[0])).ToArray();
        CpuExpertKernel.SwiGluMany(_pool, jobs);
        for (int i = 0; i < experts.Length; i++) Assert.True(Identical(outputs[i], separate[i]), $"expert {i}");
    }

    [Fact]
    public void SwiGlu_OutputAliasesInput_ComputesInPlace()
    {
        using var scope = NewDisposeScope();
        var (x, w1, w3, w2) = RandomExpert(256, 384, 4, ScalarType.BFloat16);
        var expected = Run(x, w1, w3, w2, ScalarType.BFloat16);
        var inPlace = x.clone();
        CpuExpertKernel.SwiGlu(_pool, Ptr(inPlace), 4, Weights(w1, w3, w2, ScalarType.BFloat16), Ptr(inPlace));
        Assert.True(Identical(inPlace, expected));
    }

    [Theory]
    [InlineData(CpuIsa.Scalar, ScalarType.BFloat16)]
    [InlineData(CpuIsa.Avx2, ScalarType.BFloat16)]
    [InlineData(CpuIsa.Avx512, ScalarType.BFloat16)]
    [InlineData(CpuIsa.Avx512, ScalarType.Float32)]
    public void SwiGlu_IntermediateSlices_SumToTheWholeExpert(CpuIsa isa, ScalarType type)
    {
        // A CPU/GPU split computes rows [0, k) here and [k, I) elsewhere: the two slices' outputs must add up to the expert.
        if (!Supported(isa)) return;
        CpuExpertKernel.ForceIsa = isa;
        using var scope = NewDisposeScope();
        int hidden = 256, intermediate = 384, k = 160, tokens = 3;
        var (x, w1, w3, w2) = RandomExpert(hidden, intermediate, tokens, type);
        var whole = Run(x, w1, w3, w2, type);
        var weightType = Weights(w1, w3, w2, type).Type;
        int bytes = (int)w1.element_size();
        var head = new ExpertWeights(Ptr(w1), Ptr(w3), Ptr(w2), hidden, k, weightType, w2Stride: intermediate);
        var tail = new ExpertWeights((byte*)Ptr(w1) + (long)k * hidden * bytes, (byte*)Ptr(w3) + (long)k * hidden * bytes,
            (byte*)Ptr(w2) + (long)k * bytes, hidden, intermediate - k, weightType, w2Stride: intermediate);
        var (y1, y2) = (full(x.shape, float.NaN), full(x.shape, float.NaN));
        CpuExpertKernel.SwiGluMany(_pool, [new ExpertJob(head, Ptr(x), Ptr(y1), tokens), new ExpertJob(tail, Ptr(x), Ptr(y2), tokens)]);
        Assert.True(MaxRelativeError(y1 + y2, whole) <= 1e-5, $"{isa} {type}: slices do not add up");
        Assert.True(MaxRelativeError(y1, whole) > 1e-2, "the head slice alone should differ from the whole expert");
    }

    [Fact]
    public void SwiGlu_W2StrideBelowIntermediate_ThrowsArgumentException()
    {
        var buffer = new float[8];
        fixed (float* p = buffer)
        {
            var w = new ExpertWeights(p, p, p, 2, 4, WeightType.F32, w2Stride: 3);
            float* q = p;
            Assert.Throws<ArgumentException>(() => CpuExpertKernel.SwiGlu(_pool, q, 1, w, q + 4));
        }
    }

    [Fact]
    public void SwiGlu_NullWeights_ThrowsArgumentException()
    {
        var buffer = new float[8];
        var w = new ExpertWeights(null, null, null, 4, 4, WeightType.BF16);
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* p = buffer) CpuExpertKernel.SwiGlu(_pool, p, 1, w, p + 4);
        });
    }

    private void AssertMatchesReference(int hidden, int intermediate, int tokens, ScalarType type)
    {
        using var scope = NewDisposeScope();
        var (x, w1, w3, w2) = RandomExpert(hidden, intermediate, tokens, type);
        var y = Run(x, w1, w3, w2, type);
        // Reference: the same math in float64 on the rounded weights; fp32 accumulation in another order stays ~1e-6.
        var (xd, w1d, w3d, w2d) = (x.to(ScalarType.Float64), w1.to(ScalarType.Float64), w3.to(ScalarType.Float64), w2.to(ScalarType.Float64));
        var reference = nn.functional.linear(nn.functional.silu(nn.functional.linear(xd, w1d)) * nn.functional.linear(xd, w3d), w2d);
        double error = MaxRelativeError(y, reference);
        Assert.True(error <= 1e-4, $"{CpuExpertKernel.ForceIsa} {type} H={hidden} I={intermediate} T={tokens}: max relative error {error:E2}");
    }

    private static (Tensor x, Tensor w1, Tensor w3, Tensor w2) RandomExpert(int hidden, int intermediate, int tokens, ScalarType type) =>
        (randn(tokens, hidden),
         (randn(intermediate, hidden) / Math.Sqrt(hidden)).to(type),
         (randn(intermediate, hidden) / Math.Sqrt(hidden)).to(type),
         (randn(hidden, intermediate) / Math.Sqrt(intermediate)).to(type));

    /// <summary>Runs the kernel into a NaN-poisoned output, so an unwritten element fails the comparison.</summary>
    private Tensor Run(Tensor x, Tensor w1, Tensor w3, Tensor w2, ScalarType type)
    {
        var y = full(x.shape, float.NaN);
        CpuExpertKernel.SwiGlu(_pool, Ptr(x), (int)x.shape[0], Weights(w1, w3, w2, type), Ptr(y));
        return y;
    }

    private static ExpertWeights Weights(Tensor w1, Tensor w3, Tensor w2, ScalarType type) =>
        new(Ptr(w1), Ptr(w3), Ptr(w2), (int)w1.shape[1], (int)w1.shape[0], type switch
        {
            ScalarType.BFloat16 => WeightType.BF16,
            ScalarType.Float16 => WeightType.F16,
            _ => WeightType.F32,
        });

    /// <summary>Bitwise-equal values (NaN never equals, so an unwritten element fails).</summary>
    private static bool Identical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && (a == b).all().item<bool>();

    private static float* Ptr(Tensor t) => (float*)TensorMemory.DataPtr(t);

    /// <summary>max |a − b| / max |b|: elementwise relative error is meaningless where outputs cross zero. NaN fails.</summary>
    private static double MaxRelativeError(Tensor a, Tensor b)
    {
        var (ad, bd) = (a.to(ScalarType.Float64), b.to(ScalarType.Float64));
        double error = (ad - bd).abs().max().item<double>() / bd.abs().max().item<double>();
        return double.IsNaN(error) ? double.PositiveInfinity : error;
    }

    private static bool Supported(CpuIsa isa) => isa switch
    {
        CpuIsa.Avx512 => CpuExpertKernel.BestIsa == CpuIsa.Avx512,
        CpuIsa.Avx2 => CpuExpertKernel.BestIsa != CpuIsa.Scalar,
        _ => true,
    };
}

using Fiddler.Kernels.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Sampling;

public sealed class SamplerTests
{
    private static float[] RandomLogits(int seed, int v = 1000)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, v).Select(_ => (float)(rng.NextDouble() * 10 - 5))];
    }

    private static int ArgMax(float[] x) => Array.IndexOf(x, x.Max());

    private static double[] Softmax(float[] logits, double temperature = 1)
    {
        double max = logits.Max();
        var e = logits.Select(l => Math.Exp((l - max) / temperature)).ToArray();
        double s = e.Sum();
        return [.. e.Select(x => x / s)];
    }

    private static double[] Frequencies(Sampler sampler, float[] logits, int draws)
    {
        var counts = new double[logits.Length];
        for (int i = 0; i < draws; i++)
        {
            counts[sampler.Sample(logits)]++;
        }
        return [.. counts.Select(c => c / draws)];
    }

    [Fact]
    public void Sample_Greedy_ReturnsArgmax()
    {
        using var scope = torch.NewDisposeScope();
        var sampler = new Sampler(SamplingOptions.Greedy);
        using var logits = tensor(new float[] { 0.1f, 3f, 2.9f, -1f });
        Assert.Equal(1, sampler.Sample(logits));
        for (int seed = 0; seed < 10; seed++)
        {
            var x = RandomLogits(seed);
            Assert.Equal(ArgMax(x), sampler.Sample(tensor(x)));
        }
    }

    [Fact]
    public void Sample_GreedyTies_ReturnsFirstMax()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 0));
        Assert.Equal(1, sampler.Sample([0f, 5f, 5f, 1f]));
    }

    [Fact]
    public void Sample_Bfloat16AndBatchedShape_Works()
    {
        using var scope = torch.NewDisposeScope();
        var sampler = new Sampler(SamplingOptions.Greedy);
        var logits = tensor(new float[] { 0f, 1f, 4f, 2f }).to_type(ScalarType.BFloat16).reshape(1, 1, 4);
        Assert.Equal(2, sampler.Sample(logits));
        Assert.Equal(2, sampler.Sample(logits)); // input tensor still alive and unchanged
        Assert.Equal(ScalarType.BFloat16, logits.dtype);
    }

    [Fact]
    public void Sample_NonVectorShape_Throws()
    {
        using var scope = torch.NewDisposeScope();
        var sampler = new Sampler(SamplingOptions.Greedy);
        Assert.Throws<ArgumentException>(() => sampler.Sample(zeros(2, 4)));
        Assert.Throws<ArgumentException>(() => sampler.Sample(tensor(3f)));
    }

    [Fact]
    public void Sample_SameSeed_SameSequence()
    {
        using var scope = torch.NewDisposeScope();
        var options = new SamplingOptions(Temperature: 0.9f, TopK: 50, TopP: 0.95f, Seed: 42);
        var a = new Sampler(options);
        var b = new Sampler(options);
        var c = new Sampler(options with { Seed = 43 });
        var seqA = new List<int>();
        var seqB = new List<int>();
        var seqC = new List<int>();
        for (int step = 0; step < 200; step++)
        {
            var x = RandomLogits(step);
            seqA.Add(a.Sample(tensor(x)));
            seqB.Add(b.Sample(x));                                      // CPU span path
            seqC.Add(c.Sample(tensor(x, dtype: ScalarType.Float64)));  // other dtype, other seed
        }
        Assert.Equal(seqA, seqB);
        Assert.NotEqual(seqA, seqC);
        Assert.Equal(42UL, a.Seed);
    }

    [Fact]
    public void Sample_SameSeedAcrossDtypes_SameSequence()
    {
        using var scope = torch.NewDisposeScope();
        var options = new SamplingOptions(Temperature: 1.3f, Seed: 7);
        var a = new Sampler(options);
        var b = new Sampler(options);
        // Values exactly representable in bfloat16, so every dtype sees the same logits.
        var x = tensor(new float[] { 0.5f, 1f, -2f, 0.25f, 1.5f, 0f });
        var xb = x.to_type(ScalarType.BFloat16);
        for (int i = 0; i < 100; i++)
        {
            Assert.Equal(a.Sample(x), b.Sample(xb));
        }
    }

    [Fact]
    public void Sample_NullSeed_PicksRandomSeedAndReportsIt()
    {
        var a = new Sampler(new SamplingOptions());
        var replay = new Sampler(new SamplingOptions(Seed: a.Seed));
        var x = RandomLogits(3, 50);
        for (int i = 0; i < 50; i++)
        {
            Assert.Equal(replay.Sample(x), a.Sample(x));
        }
    }

    [Fact]
    public void Sample_TopK1_EqualsGreedy()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 2f, TopK: 1, Seed: 1));
        for (int seed = 0; seed < 50; seed++)
        {
            var x = RandomLogits(seed);
            Assert.Equal(ArgMax(x), sampler.Sample(x));
        }
    }

    [Fact]
    public void Sample_TinyTopP_EqualsGreedy()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1.5f, TopP: 1e-6f, Seed: 2));
        for (int seed = 0; seed < 50; seed++)
        {
            var x = RandomLogits(seed);
            Assert.Equal(ArgMax(x), sampler.Sample(x));
        }
    }

    [Fact]
    public void Sample_ManyDraws_FrequenciesMatchSoftmax()
    {
        float[] logits = [1f, 2f, 0.5f, 3f, -1f];
        const float temperature = 0.8f;
        var freq = Frequencies(new Sampler(new SamplingOptions(Temperature: temperature, Seed: 123)), logits, 50_000);
        var p = Softmax(logits, temperature);
        for (int i = 0; i < logits.Length; i++)
        {
            Assert.InRange(freq[i], p[i] - 0.01, p[i] + 0.01);
        }
    }

    [Fact]
    public void Sample_TopK2_RenormalisesOverTopTwo()
    {
        float[] logits = [1f, 2f, 0.5f, 3f];
        var freq = Frequencies(new Sampler(new SamplingOptions(TopK: 2, Seed: 5)), logits, 40_000);
        var p = Softmax([2f, 3f]);
        Assert.Equal(0, freq[0]);
        Assert.Equal(0, freq[2]);
        Assert.InRange(freq[1], p[0] - 0.01, p[0] + 0.01);
        Assert.InRange(freq[3], p[1] - 0.01, p[1] + 0.01);
    }

    [Fact]
    public void Sample_TopP_KeepsSmallestNucleus()
    {
        // probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps {0, 1} (0.5 < 0.75 <= 0.8).
        float[] logits = [.. new[] { 0.5, 0.3, 0.15, 0.05 }.Select(q => (float)Math.Log(q))];
        var freq = Frequencies(new Sampler(new SamplingOptions(TopP: 0.75f, Seed: 9)), logits, 40_000);
        Assert.Equal(0, freq[2]);
        Assert.Equal(0, freq[3]);
        Assert.InRange(freq[0], 0.625 - 0.01, 0.625 + 0.01);
    }

    [Fact]
    public void Sample_NegativeInfinityLogits_NeverChosen()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 5f, Seed: 11));
        float[] logits = [float.NegativeInfinity, 0f, float.NegativeInfinity, 0f];
        for (int i = 0; i < 1000; i++)
        {
            int id = sampler.Sample(logits);
            Assert.True(id is 1 or 3);
        }
    }

    [Fact]
    public void Sample_NaNOrAllMasked_Throws()
    {
        var sampler = new Sampler(new SamplingOptions(Seed: 1));
        Assert.Throws<ArgumentException>(() => sampler.Sample([0f, float.NaN]));
        Assert.Throws<ArgumentException>(() => sampler.Sample([float.NegativeInfinity, float.NegativeInfinity]));
        Assert.Throws<ArgumentException>(() => new Sampler(SamplingOptions.Greedy).Sample([0f, float.NaN]));
        Assert.Throws<ArgumentException>(() => sampler.Sample(ReadOnlySpan<float>.Empty));
    }

    [Fact]
    public void TopLogprobs_ReturnsSortedLogSoftmax()
    {
        using var scope = torch.NewDisposeScope();
        var x = RandomLogits(77, 300);
        var t = tensor(x);
        var sampler = new Sampler(SamplingOptions.Greedy);
        var (ids, logprobs) = sampler.TopLogprobs(t, 5);
        var expected = torch.nn.functional.log_softmax(t.to_type(ScalarType.Float64), 0);
        var (values, indices) = expected.topk(5);
        Assert.Equal(indices.data<long>().Select(i => (int)i).ToArray(), ids);
        var ev = values.data<double>().ToArray();
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(ev[i], logprobs[i], 5);
        }
        for (int i = 1; i < 5; i++)
        {
            Assert.True(logprobs[i] <= logprobs[i - 1]);
        }
    }

    [Fact]
    public void TopLogprobs_TiesAndClamp_LowerIdFirstAndAtMostV()
    {
        var sampler = new Sampler(SamplingOptions.Greedy);
        var (ids, logprobs) = sampler.TopLogprobs([1f, 3f, 3f, 0f], 10);
        Assert.Equal([1, 2, 0, 3], ids);
        Assert.Equal(4, logprobs.Length);
        Assert.Equal(logprobs[0], logprobs[1]);
        double total = logprobs.Sum(l => Math.Exp(l));
        Assert.Equal(1.0, total, 5);
        Assert.Empty(sampler.TopLogprobs([1f, 2f], 0).ids);
    }

    [Theory]
    [InlineData(-0.1f, 0, 1f)]
    [InlineData(float.NaN, 0, 1f)]
    [InlineData(float.PositiveInfinity, 0, 1f)]
    [InlineData(1f, -1, 1f)]
    [InlineData(1f, 0, 0f)]
    [InlineData(1f, 0, -0.5f)]
    [InlineData(1f, 0, 1.01f)]
    [InlineData(1f, 0, float.NaN)]
    public void Validate_InvalidOptions_Throws(float temperature, int topK, float topP)
    {
        var options = new SamplingOptions(temperature, topK, topP);
        Assert.Throws<Fiddler.Kernels.Generation.GenerationRequestException>(options.Validate);
        Assert.Throws<Fiddler.Kernels.Generation.GenerationRequestException>(() => new Sampler(options));
    }

    [Theory]
    [InlineData(0f, 0, 1f)]
    [InlineData(0.7f, 40, 0.9f)]
    [InlineData(2f, 1, 1e-6f)]
    public void Validate_ValidOptions_DoesNotThrow(float temperature, int topK, float topP)
    {
        new SamplingOptions(temperature, topK, topP).Validate();
    }

    [Fact]
    public void SamplingOptions_Defaults_AreNeutral()
    {
        var o = new SamplingOptions();
        Assert.Equal(1f, o.Temperature);
        Assert.Equal(0, o.TopK);
        Assert.Equal(1f, o.TopP);
        Assert.Null(o.Seed);
        Assert.False(o.IsGreedy);
        Assert.True(SamplingOptions.Greedy.IsGreedy);
    }

    [Theory]
    [InlineData(0, 1.0f)]    // temperature only
    [InlineData(50, 0.9f)]   // small top-k, top-p
    [InlineData(200, 0.95f)] // top-k above the small-k path, top-p
    public void Sample_Mixtral32kVocabulary_AllocatesNothingLargePerToken(int topK, float topP)
    {
        // A decode loop samples once per token: after the first call the sampler's scratch is reused, so a token costs
        // a few small objects at most, never a 32000-entry array (those land on the large-object heap and bring full
        // collections into decoding).
        var sampler = new Sampler(new SamplingOptions(0.8f, topK, topP, 7));
        float[] logits = RandomLogits(3, 32000);
        var values = new float[32000];
        using var tensorLogits = tensor(logits);
        sampler.Sample(logits);
        Sampler.ToCpuFloat32(tensorLogits, values);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) sampler.Sample(logits);
        long perToken = (GC.GetAllocatedBytesForCurrentThread() - before) / 10;
        Assert.True(perToken < 1024, $"{perToken} bytes allocated per sampled token");
        Assert.Equal(logits, values);
    }

    [Fact]
    public void ToCpuFloat32_IntoBufferOfWrongLength_Throws()
    {
        using var t = tensor(new float[] { 1, 2, 3 });
        var e = Assert.Throws<ArgumentException>(() => Sampler.ToCpuFloat32(t, new float[4]));
        Assert.Contains("3 values", e.Message);
    }
}

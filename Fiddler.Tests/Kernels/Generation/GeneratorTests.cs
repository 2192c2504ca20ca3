using Xunit;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Sampling;
using Fiddler.Tests.Support;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Generation;

public sealed class GeneratorTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Run_Greedy_MatchesFullRecomputeWithoutCache()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        int[] prompt = [5, 17, 33, 2, 90];
        var result = new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run(prompt,
            new GenerationOptions { MaxNewTokens = 12, Sampling = SamplingOptions.Greedy, StopOnEos = false });
        Assert.Equal(12, result.Tokens.Length);
        AssertMatchesFullRecompute(loaded.Model, prompt, result.Tokens);
    }

    [Theory]
    [InlineData("The capital of France is")]
    [InlineData("Once upon a time")]
    public void Run_WithTokenizer_TextContinuesThePromptAsTheWholeSequenceDecodes(string promptText)
    {
        // The first new token decodes as it does after the prompt ("▁Paris" → " Paris"), as transformers' pipeline and
        // vLLM give it: prompt text + generated text = the whole sequence's text.
        using var loaded = ModelLoader.Load(Fiddler.Host.Cli.DefaultModel.Directory, new LoadOptions(CPU, ScalarType.Float32));
        var tok = loaded.Tokenizer!;
        int[] prompt = tok.Encode(promptText);
        var streamed = new System.Text.StringBuilder();
        var result = new Fiddler.Kernels.Generation.Generator(loaded.Model, tok).Run(prompt,
            new GenerationOptions { MaxNewTokens = 8, Sampling = SamplingOptions.Greedy, StopOnEos = false }, t => streamed.Append(t.Text));
        string whole = tok.Decode([.. prompt, .. result.Tokens]), before = tok.Decode(prompt);
        Assert.StartsWith(before, whole);
        Assert.Equal(whole[before.Length..], result.Text);
        Assert.Equal(result.Text, streamed.ToString());
    }

    /// <summary>Reference: recompute the whole sequence from scratch each step (no KV reuse) and take the argmax.</summary>
    private static void AssertMatchesFullRecompute(Fiddler.Kernels.Modules.MixtralForCausalLM model, int[] prompt, int[] tokens)
    {
        var sequence = prompt.Select(i => (long)i).ToList();
        using var noGrad = no_grad();
        foreach (int token in tokens)
        {
            using var cache = model.NewCache(sequence.Count);
            using var logits = model.Forward(tensor(sequence.ToArray()).unsqueeze(0), cache);
            long next = logits[0].argmax().item<long>();
            Assert.Equal(next, token);
            sequence.Add(next);
        }
    }

    [Fact]
    public void Run_SlidingWindowShorterThanSequence_MatchesFullRecompute()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config(slidingWindow: 4));
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        int[] prompt = [1, 2, 3, 4, 5, 6, 7];
        var result = new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run(prompt,
            new GenerationOptions { MaxNewTokens = 6, Sampling = SamplingOptions.Greedy, StopOnEos = false });
        Assert.Equal(6, result.Tokens.Length);
        AssertMatchesFullRecompute(loaded.Model, prompt, result.Tokens);
    }

    [Fact]
    public void Run_KvCacheBeyondHostMemory_RefusedInOneLineAndTheModelStillGenerates()
    {
        // A context of 2^31 − 1 tokens: 2 billion new tokens need ~1 TB of KV cache (2 layers × 2 × 2 heads × 8 dims × 4 B
        // = 256 B a token), more than any CI host has; refused before anything is allocated.
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config() with { MaxPositionEmbeddings = int.MaxValue });
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        var generator = new Fiddler.Kernels.Generation.Generator(loaded.Model, null);
        var e = Assert.Throws<GenerationRequestException>(() => generator.Run([1, 2], new GenerationOptions { MaxNewTokens = 2_000_000_000 }));
        Assert.Contains("KV cache", e.Message);
        Assert.Contains("ask for fewer tokens", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        var beams = Assert.Throws<GenerationRequestException>(() => new BeamSearch(loaded.Model).Run([1, 2], 4, 600_000_000));
        Assert.Contains("for 4 beams", beams.Message);
        Assert.Equal(3, generator.Run([1, 2], new GenerationOptions { MaxNewTokens = 3, StopOnEos = false }).Tokens.Length);
    }

    [Fact]
    public void Run_BadRequest_ThrowsGenerationRequestException()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        var generator = new Fiddler.Kernels.Generation.Generator(loaded.Model, null);
        var e = Assert.Throws<GenerationRequestException>(() => generator.Run([1, 2, 3], new GenerationOptions { MaxNewTokens = 126 }));
        Assert.Contains("context length 128", e.Message);
        Assert.Throws<GenerationRequestException>(() => generator.Run([1, 500], new GenerationOptions { MaxNewTokens = 2 }));
        Assert.Throws<GenerationRequestException>(() => generator.Run([], new GenerationOptions { MaxNewTokens = 2 }));
    }

    [Fact]
    public void Run_SameSeed_SameTokens()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        var generator = new Fiddler.Kernels.Generation.Generator(loaded.Model, null);
        var options = new GenerationOptions { MaxNewTokens = 10, Sampling = new SamplingOptions(1.0f, 0, 1, 42), StopOnEos = false };
        Assert.Equal(generator.Run([3, 4], options).Tokens, generator.Run([3, 4], options).Tokens);
    }
}

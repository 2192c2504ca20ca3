using System.Text.Json;
using Xunit;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Fiddler.Tests.Support;
using static TorchSharp.torch;
using Generator = Fiddler.Kernels.Generation.Generator;

namespace Fiddler.Tests.Kernels.Generation;

/// <summary>
/// The pipelined greedy decode (<see cref="DecodePipeline"/>, the generator's default) against step-by-step decoding:
/// the same tokens, log-probabilities, stops and errors, on every kind of plan.
/// </summary>
public sealed class DecodePipelineTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    private static GenerationOptions Greedy(int tokens) => new() { MaxNewTokens = tokens, Sampling = SamplingOptions.Greedy, StopOnEos = false };

    private static (int[] Tokens, float[] Logprobs, FinishReason Finish) Generate(Fiddler.Kernels.Modules.MixtralForCausalLM model, bool pipelined,
        int[] prompt, GenerationOptions options)
    {
        var logprobs = new List<float>();
        var result = new Generator(model, null) { Pipelined = pipelined }.Run(prompt, options, t => { if (t.Id >= 0) logprobs.Add(t.Logprob); });
        return (result.Tokens, [.. logprobs], result.Finish);
    }

    public static TheoryData<string> Routes() => ["cpu", "transfer", "split", "mixed"];

    [Theory]
    [MemberData(nameof(Routes))]
    public void Pipelined_OffloadedPlan_SameTokensAndLogprobsAsStepByStep(string route)
    {
        string dir = Fixture("tiny-gqa4-top3");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32,
            ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (l, e) => (l + e) % 2 == 0)));
        using var stager = new CopyStager(2, config.HiddenSize, config.IntermediateSize, ScalarType.Float32, CPU);
        var scheduler = new PlanParity.ForcedScheduler((l, w) => route switch
        {
            "cpu" => ExpertRoute.Cpu,
            "transfer" => ExpertRoute.Transfer,
            "split" => ExpertRoute.Split(0.5),
            _ => (l + w.Expert) % 3 == 0 ? ExpertRoute.Transfer : (l + w.Expert) % 3 == 1 ? ExpertRoute.Split(0.25) : ExpertRoute.Cpu,
        });
        using var executor = new OffloadExecutor(scheduler, new TorchCpuBackend(), stager);
        loaded.Model.SetExpertExecutor(executor);
        int[] prompt = [3, 14, 15, 92, 65];

        var stepped = Generate(loaded.Model, pipelined: false, prompt, Greedy(10));
        var pipelined = Generate(loaded.Model, pipelined: true, prompt, Greedy(10));

        Assert.Equal(10, stepped.Tokens.Length);
        Assert.Equal(stepped.Tokens, pipelined.Tokens);
        Assert.Equal(stepped.Logprobs, pipelined.Logprobs);
        Assert.Equal(FinishReason.Length, pipelined.Finish);
        if (route != "transfer") Assert.Contains(scheduler.Observed, o => o.CpuTokens > 0);
        if (route != "cpu") Assert.Contains(scheduler.Observed, o => o.TransferredBytes > 0);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Pipelined_FewTokens_ExactlyThatMany(int tokens)
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        var stepped = Generate(loaded.Model, pipelined: false, [5, 6, 7], Greedy(tokens));
        var pipelined = Generate(loaded.Model, pipelined: true, [5, 6, 7], Greedy(tokens));
        Assert.Equal(tokens, pipelined.Tokens.Length);
        Assert.Equal(stepped.Tokens, pipelined.Tokens);
    }

    [Fact]
    public void Pipelined_EosMidway_StopsAtTheSameTokenAsStepByStep()
    {
        // An EOS id that greedy decoding first reaches on its third token or later.
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        int[] prompt = [9, 8, 7, 6];
        int[] free;
        using (var probe = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32)))
            free = Generate(probe.Model, pipelined: false, prompt, Greedy(12)).Tokens;
        int k = Enumerable.Range(2, free.Length - 2).First(i => !free[..i].Contains(free[i]));
        var config = TinyCheckpoint.Config() with { EosTokenIdRaw = JsonDocument.Parse(free[k].ToString()).RootElement };
        TinyCheckpoint.Write(_dir, config);
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        var options = Greedy(12) with { StopOnEos = true };

        var stepped = Generate(loaded.Model, pipelined: false, prompt, options);
        var pipelined = Generate(loaded.Model, pipelined: true, prompt, options);

        Assert.Equal(FinishReason.Eos, stepped.Finish);
        Assert.Equal(FinishReason.Eos, pipelined.Finish);
        Assert.Equal(free[..(k + 1)], pipelined.Tokens);
        Assert.Equal(stepped.Tokens, pipelined.Tokens);
    }

    [Fact]
    public void Advance_ConsumerStops_StepDroppedAndCacheHoldsOnlyTheConsumedTokens()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        using var noGrad = no_grad();
        using var cache = loaded.Model.NewCache(32);
        using (loaded.Model.Forward(tensor(new long[] { 1, 2, 3 }).unsqueeze(0), cache)) { }
        Assert.Equal(3, cache.Length);

        using var pipeline = new DecodePipeline(loaded.Model, cache, 4);
        int handed = 0;
        bool Consume(float[] logits) => ++handed < 2; // stop at the second step's logits
        Assert.True(pipeline.Advance(Consume));        // step 1 queued (input 4)
        Assert.True(pipeline.Advance(Consume));        // step 1's logits handed out, step 2 queued
        Assert.Equal(5, cache.Length);
        Assert.False(pipeline.Advance(Consume));       // step 2's logits stop it: step 3 is dropped
        Assert.Equal(2, handed);
        Assert.Equal(5, cache.Length);                 // the prompt, the first token and step 2's input; not step 3's
        Assert.False(pipeline.Pending);
        pipeline.Finish(Consume);                      // nothing left to hand out
        Assert.Equal(2, handed);
    }

    [Fact]
    public void Pipelined_Cancelled_StopsWithCancelledAndKeepsWhatWasStreamed()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        using var cts = new CancellationTokenSource();
        int seen = 0;
        var result = new Generator(loaded.Model, null).Run([1, 2], Greedy(20), t => { if (++seen == 3) cts.Cancel(); }, cts.Token);
        Assert.Equal(FinishReason.Cancelled, result.Finish);
        Assert.Equal(3, result.Tokens.Length);
    }

    private sealed class FailingBackend : ICpuExpertBackend
    {
        public int Calls;
        public int FailAt { get; init; }
        public string Name => "failing";
        public void Run(IReadOnlyList<CpuExpertJob> jobs)
        {
            if (Interlocked.Increment(ref Calls) == FailAt) throw new InvalidOperationException("CPU expert failed on purpose");
            new TorchCpuBackend().Run(jobs);
        }
    }

    [Theory]
    [InlineData(3, 6, 2)] // a middle step's: collected before the next step's first layer
    [InlineData(4, 4, 3)] // the last step's: collected by Finish
    public void Pipelined_AStepsLastLaneFails_ErrorSurfacesBeforeItsTokenAndTheNextGenerationWorks(int failingForward, int newTokens, int streamedBefore)
    {
        using var loaded = AllExpertsOnHost("tiny-mha-top1");
        var config = loaded.Model.Config;
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        // Every layer of every forward has one CPU lane. Forward 1 is the prompt's (token 1), forward k the (k−1)-th decode
        // step's (token k): fail that forward's last layer, the lane a pipelined step leaves running.
        var failing = new FailingBackend { FailAt = config.NumHiddenLayers * failingForward };
        using (var executor = new OffloadExecutor(scheduler, failing, null))
        {
            loaded.Model.SetExpertExecutor(executor);
            int streamed = 0;
            var e = Assert.Throws<InvalidOperationException>(() => new Generator(loaded.Model, null).Run([1, 2, 3], Greedy(newTokens), _ => streamed++));
            Assert.Contains("on purpose", e.Message);
            // The failed step's logits (its lane's rows merged all the same) never reach the sampler or the client.
            Assert.Equal(streamedBefore, streamed);
        }
        using var healthy = new OffloadExecutor(scheduler, new TorchCpuBackend(), null);
        loaded.Model.SetExpertExecutor(healthy);
        Assert.Equal(6, new Generator(loaded.Model, null).Run([1, 2, 3], Greedy(6)).Tokens.Length);
    }

    private sealed class CancellingBackend(CancellationTokenSource cts) : ICpuExpertBackend
    {
        public int Calls;
        public string Name => "cancelling";
        public void Run(IReadOnlyList<CpuExpertJob> jobs)
        {
            if (Interlocked.Increment(ref Calls) == 1) cts.Cancel(); // the client leaves during the prompt's first layer
            new TorchCpuBackend().Run(jobs);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Run_CancelledDuringPrefill_StopsBetweenLayersWithNoToken(bool pipelined)
    {
        using var loaded = AllExpertsOnHost("tiny-mha-top1");
        using var cts = new CancellationTokenSource();
        var backend = new CancellingBackend(cts);
        using var executor = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), backend, null);
        loaded.Model.SetExpertExecutor(executor);
        int streamed = 0;
        var result = new Generator(loaded.Model, null) { Pipelined = pipelined }.Run([1, 2, 3], Greedy(6), _ => streamed++, cts.Token);
        Assert.Equal(FinishReason.Cancelled, result.Finish);
        Assert.Empty(result.Tokens);
        Assert.Equal(0, streamed);
        Assert.Equal(1, backend.Calls); // the prompt's later layers never ran
        // Cancelled before it starts: no layer at all.
        var before = new Generator(loaded.Model, null).Run([1, 2, 3], Greedy(6), null, cts.Token);
        Assert.Equal(FinishReason.Cancelled, before.Finish);
        Assert.Equal(1, backend.Calls);
    }

    [Fact]
    public void Advance_ThrowsForAFailedLaneItsLogitsDependOn_FinishHandsNothingOut()
    {
        // The logits land late (as on CUDA with the host ahead): the next step's first layer collects the failed lane.
        using var loaded = AllExpertsOnHost("tiny-mha-top1");
        var config = loaded.Model.Config;
        using var executor = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu),
            new FailingBackend { FailAt = config.NumHiddenLayers * 2 }, null); // forward 2 (the first queued step): its last lane
        loaded.Model.SetExpertExecutor(executor);
        using var noGrad = no_grad();
        using var cache = loaded.Model.NewCache(32);
        long first;
        using (var prefill = loaded.Model.Forward(tensor(new long[] { 3, 14, 15 }).unsqueeze(0), cache)) first = prefill.argmax(-1).item<long>();
        bool handed = false;
        using var pipeline = new DecodePipeline(loaded.Model, cache, first) { LandedProbe = () => false };
        Assert.True(pipeline.Advance(_ => handed = true));
        Assert.Contains("on purpose", Assert.Throws<InvalidOperationException>(() => pipeline.Advance(_ => handed = true)).Message);
        pipeline.Finish(_ => handed = true);
        Assert.False(handed);
    }

    /// <summary>A fixture model loaded on the CPU device with every expert on the host (each layer has a CPU lane).</summary>
    private static LoadedModel AllExpertsOnHost(string fixture)
    {
        string dir = Fixture(fixture);
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        return ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32,
            ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
    }

    /// <summary>
    /// Decodes through the pipeline with the logits landing when <paramref name="landed"/> says (null: at once, as on the
    /// CPU device), stopping at the <paramref name="stopAt"/>-th step's logits; the tokens and where the cache ended.
    /// </summary>
    private static (List<long> Tokens, long CacheLength) Pipelined(Fiddler.Kernels.Modules.MixtralForCausalLM model, int stopAt, Func<bool>? landed)
    {
        using var noGrad = no_grad();
        using var cache = model.NewCache(32);
        long first;
        using (var prefill = model.Forward(tensor(new long[] { 3, 14, 15 }).unsqueeze(0), cache)) first = prefill.argmax(-1).item<long>();
        var tokens = new List<long> { first };
        bool Consume(float[] logits)
        {
            tokens.Add(Array.IndexOf(logits, logits.Max()));
            return tokens.Count < stopAt;
        }
        using (var pipeline = new DecodePipeline(model, cache, first) { LandedProbe = landed })
        {
            while (pipeline.Advance(Consume)) { }
            pipeline.Finish(null);
        }
        return (tokens, cache.Length);
    }

    [Fact]
    public void Advance_LogitsLandBetweenLayersOrAfterTheStep_SameTokensAndCacheAsAtOnce()
    {
        // On CUDA the previous token's logits land while the next step's first layer runs (the step is dropped between
        // layers, after layer 0's CPU lane was started), or after the whole step was queued (dropped whole). The CPU
        // device always has them at once; the probe plays the other two.
        using var loaded = AllExpertsOnHost("tiny-gqa4-top3");
        var config = loaded.Model.Config;
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        using var executor = new OffloadExecutor(scheduler, new TorchCpuBackend(), null);
        loaded.Model.SetExpertExecutor(executor);

        var atOnce = Pipelined(loaded.Model, stopAt: 5, landed: null);
        int checks = 0;
        var betweenLayers = Pipelined(loaded.Model, stopAt: 5, landed: () => ++checks % 2 == 0); // lands at the second check
        var afterStep = Pipelined(loaded.Model, stopAt: 5, landed: () => false);

        Assert.Equal(5, atOnce.Tokens.Count);
        Assert.Equal(atOnce.Tokens, betweenLayers.Tokens);
        Assert.Equal(atOnce.Tokens, afterStep.Tokens);
        // The prompt and every token but the last (which stopped it) are in the cache, whichever way the step was dropped.
        Assert.Equal(3 + 4, atOnce.CacheLength);
        Assert.Equal(atOnce.CacheLength, betweenLayers.CacheLength);
        Assert.Equal(atOnce.CacheLength, afterStep.CacheLength);
        Assert.True(checks > 0);
    }

    [Fact]
    public void Advance_ConsumerThrowsAfterTheStepWasQueued_StepDroppedAndErrorSurfaces()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        using var loaded = ModelLoader.Load(_dir, new LoadOptions(CPU, ScalarType.Float32));
        using var noGrad = no_grad();
        using var cache = loaded.Model.NewCache(32);
        using (loaded.Model.Forward(tensor(new long[] { 1, 2 }).unsqueeze(0), cache)) { }
        using var pipeline = new DecodePipeline(loaded.Model, cache, 4) { LandedProbe = () => false };
        Assert.True(pipeline.Advance(_ => true)); // step 1 queued
        Assert.Equal(3, cache.Length);
        var e = Assert.Throws<InvalidOperationException>(() => pipeline.Advance(_ => throw new InvalidOperationException("consumer failed")));
        Assert.Equal("consumer failed", e.Message);
        Assert.Equal(3, cache.Length); // step 2 was queued whole, then dropped
    }
}

using System.Text.Json;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Generation;

/// <summary>Beam search against transformers 5.17's (num_beams=3, 12 tokens): EOS off (Fixtures/*/beam.json) and with
/// EOS tokens that finish hypotheses early (Fixtures/*/beam_eos.json).</summary>
public class BeamSearchTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    [Theory]
    [InlineData("tiny-mha-top1", false)]
    [InlineData("tiny-gqa2-top2-swa8", false)]
    [InlineData("tiny-gqa4-top3", false)]
    [InlineData("tiny-gqa4-top3", true)]
    public void Run_FixtureModels_MatchesTransformersBeams(string model, bool offloaded)
    {
        var beams = BeamFixture.LoadIfPresent(Fixture(model))!;
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(Fixture(model), "config.json"));
        var residency = offloaded ? ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, e) => e % 2 == 0) : null;
        using var loaded = ModelLoader.Load(Fixture(model), new LoadOptions(CPU, ScalarType.Float32, residency));
        var scheduler = new PlanParity.ForcedScheduler((_, w) => ExpertRoute.Cpu);
        if (offloaded) loaded.Model.SetExpertExecutor(new OffloadExecutor(scheduler, new TorchCpuBackend(), null));

        foreach (var p in beams.prompts)
        {
            var result = new BeamSearch(loaded.Model).Run(p.prompt_ids, beams.num_beams, beams.new_tokens);
            Assert.Equal(p.hf_sequences.Length, result.Count);
            for (int i = 0; i < result.Count; i++)
            {
                Assert.Equal(p.hf_sequences[i], result[i].Tokens);
                Assert.InRange(result[i].LogProb, p.manual_scores[i] - 1e-3, p.manual_scores[i] + 1e-3);
                Assert.Equal(result[i].LogProb / beams.new_tokens, result[i].Score, 9);
            }
        }
        if (offloaded) Assert.Contains(scheduler.Observed, o => o.CpuTokens > 1); // the router saw the beams' batch
    }

    public sealed record EosCase(int[] prompt_ids, int eos, int[][] hf_sequences, double[] hf_scores);
    public sealed record EosFile(int num_beams, int new_tokens, EosCase[] cases);

    [Theory]
    [InlineData("tiny-mha-top1")]
    [InlineData("tiny-gqa2-top2-swa8")]
    [InlineData("tiny-gqa4-top3")]
    public void Run_WithEos_MatchesTransformersFinishedHypotheses(string model)
    {
        // Fixtures/make_beam_eos_fixtures.py: tokens the EOS-free beams choose, declared EOS, so hypotheses of several
        // lengths finish and compete with live beams by length-normalised score.
        var file = JsonSerializer.Deserialize<EosFile>(File.ReadAllText(Path.Combine(Fixture(model), "beam_eos.json")))!;
        using var loaded = ModelLoader.Load(Fixture(model), new LoadOptions(CPU, ScalarType.Float32));
        foreach (var c in file.cases)
        {
            var result = new BeamSearch(loaded.Model).Run(c.prompt_ids, file.num_beams, file.new_tokens, new HashSet<int> { c.eos });
            string got = string.Join(" | ", result.Select(h => $"[{string.Join(",", h.Tokens)}] {h.Score:F4}"));
            Assert.True(c.hf_sequences.Length == result.Count, $"eos {c.eos}: {result.Count} hypotheses vs HF {c.hf_sequences.Length}: {got}");
            for (int i = 0; i < result.Count; i++)
            {
                Assert.True(c.hf_sequences[i].SequenceEqual(result[i].Tokens),
                    $"eos {c.eos} #{i}: ours {got}; HF [{string.Join(",", c.hf_sequences[i])}] {c.hf_scores[i]:F4}");
                Assert.InRange(result[i].Score, c.hf_scores[i] - 1e-3, c.hf_scores[i] + 1e-3);
            }
        }
    }

    [Fact]
    public void EosFixtures_FinishHypothesesEarly_SoTheyTestEos()
    {
        // Otherwise the EOS parity above would only repeat the EOS-free one.
        var early = new[] { "tiny-mha-top1", "tiny-gqa2-top2-swa8", "tiny-gqa4-top3" }
            .Select(m => JsonSerializer.Deserialize<EosFile>(File.ReadAllText(Path.Combine(Fixture(m), "beam_eos.json")))!)
            .SelectMany(f => f.cases.Where(c => c.hf_sequences.Any(s => s.Length < f.new_tokens))).Count();
        Assert.True(early >= 4, $"only {early} EOS cases finish a hypothesis early");
    }

    [Fact]
    public void Run_EosAmongBest_FinishesHypothesis()
    {
        using var loaded = ModelLoader.Load(Fixture("tiny-mha-top1"), new LoadOptions(CPU, ScalarType.Float32));
        var beams = BeamFixture.LoadIfPresent(Fixture("tiny-mha-top1"))!;
        var p = beams.prompts[0];
        // The most likely first token, declared EOS: it finishes a 1-token hypothesis that outranks the live beams
        // (one step: every hypothesis has length 1, so ranking is by log-probability), and no beam continues it.
        int eos = p.hf_sequences[0][0];
        var result = new BeamSearch(loaded.Model).Run(p.prompt_ids, 3, 1, new HashSet<int> { eos });
        Assert.Equal([eos], result[0].Tokens);
        Assert.Equal(3, result.Count);
        Assert.True(result.Any(h => h.Tokens.SequenceEqual(new[] { eos })),
            $"eos {eos}: " + string.Join(" | ", result.Select(h => $"[{string.Join(",", h.Tokens)}] {h.LogProb:F3} {h.Score:F3}")));
        Assert.All(result, h => Assert.DoesNotContain(eos, h.Tokens[..^1]));
        Assert.True(result.Zip(result.Skip(1)).All(x => x.First.Score >= x.Second.Score), "sorted by normalised score");
    }

    [Fact]
    public void Run_BadWidth_Throws()
    {
        using var loaded = ModelLoader.Load(Fixture("tiny-mha-top1"), new LoadOptions(CPU, ScalarType.Float32));
        Assert.Throws<GenerationRequestException>(() => new BeamSearch(loaded.Model).Run([1, 2], 0, 4));
        Assert.Throws<GenerationRequestException>(() => new BeamSearch(loaded.Model).Run([1, 2], 33, 4));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-2)]
    public void Run_NoNewTokens_IsARequestError(int maxNewTokens)
    {
        // Not one empty hypothesis scored 0, which would outrank every real one.
        using var loaded = ModelLoader.Load(Fixture("tiny-mha-top1"), new LoadOptions(CPU, ScalarType.Float32));
        var e = Assert.Throws<GenerationRequestException>(() => new BeamSearch(loaded.Model).Run([1, 2], 3, maxNewTokens));
        Assert.Contains("max tokens", e.Message);
    }

    [Fact]
    public void Run_Cancelled_ThrowsInsteadOfReturningCutShortBeams()
    {
        using var loaded = ModelLoader.Load(Fixture("tiny-mha-top1"), new LoadOptions(CPU, ScalarType.Float32));
        using var before = new CancellationTokenSource();
        before.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => new BeamSearch(loaded.Model).Run([1, 2], 3, 8, cancel: before.Token));

        // Cancelled after a few forwards: the search stops there, with no hypotheses that look finished.
        using var midway = new CancellationTokenSource();
        int layers = loaded.Model.Config.NumHiddenLayers, routed = 0;
        loaded.Model.SetRoutingObserver((_, _) => { if (++routed == 3 * layers) midway.Cancel(); }); // after 3 forwards
        Assert.ThrowsAny<OperationCanceledException>(() => new BeamSearch(loaded.Model).Run([1, 2], 3, 8, cancel: midway.Token));
    }
}

using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

/// <summary>
/// Every execution plan computes the same function: experts in host memory routed to the CPU (libtorch or the SIMD
/// kernel), through weight transfers, or split, must reproduce Hugging Face's fp32 greedy tokens on the fixture
/// models. Without a GPU the "device" lane runs on the CPU device through the same executor, staging and routing
/// code; `fiddler verify --plans --device cuda` runs the same plans with CUDA streams on a GPU host.
/// </summary>
public class ExecutionPlanParityTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>Every fixture model × every plan of <paramref name="plans"/>.</summary>
    private static TheoryData<string, string, string> OnEveryModel(IEnumerable<(string Residency, string Route)> plans)
    {
        var data = new TheoryData<string, string, string>();
        foreach (var model in new[] { "tiny-mha-top1", "tiny-gqa2-top2-swa8", "tiny-gqa4-top3" })
            foreach (var (residency, route) in plans) data.Add(model, residency, route);
        return data;
    }

    public static TheoryData<string, string, string> Plans() => OnEveryModel(PlanParity.Plans);

    [Theory]
    [MemberData(nameof(Plans))]
    public void Generate_Plan_MatchesTransformersGreedyTokens(string model, string residency, string route)
    {
        var failures = PlanParity.Check(Fixture(model), residency, route, CPU, out long bytesCopied, out int cpuTokens);
        Assert.Empty(failures);
        if (route.Contains("transfer") || route.StartsWith("split") || route.StartsWith("mixed")) Assert.True(bytesCopied > 0, "no weights were staged");
        if (route != "transfer") Assert.True(cpuTokens > 0, "no expert ran on the CPU");
    }

    public static TheoryData<string, string, string> BeamPlans() => OnEveryModel(PlanParity.BeamPlans);

    [Theory]
    [MemberData(nameof(BeamPlans))]
    public void BeamSearch_Plan_MatchesTransformersBeams(string model, string residency, string route)
    {
        var failures = PlanParity.CheckBeams(Fixture(model), residency, route, CPU, out long bytesCopied, out int cpuTokens);
        Assert.Empty(failures);
        if (route.StartsWith("split") || route.StartsWith("mixed")) Assert.True(bytesCopied > 0, "no weights were staged");
        Assert.True(cpuTokens > 0, "no expert ran on the CPU");
    }

    [Fact]
    public void CheckBeams_WrongExpectedTokens_ReportsTheMismatch()
    {
        // The check can fail: a copy of a fixture whose first hypothesis is altered must be reported.
        string dir = Directory.CreateTempSubdirectory("fiddler-beams-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Fixture("tiny-mha-top1"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var beams = BeamFixture.LoadIfPresent(dir)!;
            var p = beams.prompts[0];
            var altered = p with { hf_sequences = [[.. p.hf_sequences[0][..^1], (p.hf_sequences[0][^1] + 1) % 512], .. p.hf_sequences[1..]] };
            File.WriteAllText(Path.Combine(dir, BeamFixture.FileName), System.Text.Json.JsonSerializer.Serialize(beams with { prompts = [altered, .. beams.prompts[1..]] }));
            var failures = PlanParity.CheckBeams(dir, "half", "mixed", CPU, out _, out _);
            Assert.Single(failures);
            Assert.Contains("beams p0 #0", failures[0]);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void BeamFixture_Malformed_IsAClearError()
    {
        string dir = Directory.CreateTempSubdirectory("fiddler-beams-").FullName;
        try
        {
            Assert.Null(BeamFixture.LoadIfPresent(dir));
            File.WriteAllText(Path.Combine(dir, BeamFixture.FileName), """{"num_beams": 3, "new_tokens": 4, "prompts": [{"prompt_ids": [1], "hf_sequences": [[2]], "manual_scores": []}]}""");
            var e = Assert.Throws<InvalidDataException>(() => BeamFixture.LoadIfPresent(dir));
            Assert.Contains("manual_score", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    private sealed class FailingBackend : ICpuExpertBackend
    {
        public string Name => "failing";
        public void Run(IReadOnlyList<CpuExpertJob> jobs) => throw new InvalidOperationException("CPU expert failed on purpose");
    }

    [Fact]
    public void Generate_CpuBackendFails_ErrorSurfacesAndModelStaysUsable()
    {
        string dir = Fixture("tiny-mha-top1");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32, ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        var options = new GenerationOptions { MaxNewTokens = 4, Sampling = SamplingOptions.Greedy, StopOnEos = false };
        loaded.Model.SetExpertExecutor(new OffloadExecutor(scheduler, new FailingBackend(), null));
        var e = Assert.Throws<InvalidOperationException>(() => new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run([1, 2, 3], options));
        Assert.Contains("on purpose", e.Message);
        loaded.Model.SetExpertExecutor(new OffloadExecutor(scheduler, new TorchCpuBackend(), null));
        Assert.Equal(4, new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run([1, 2, 3], options).Tokens.Length);
    }

    [Fact]
    public void Forward_HostExpertWithoutExecutor_ThrowsClearError()
    {
        string dir = Fixture("tiny-mha-top1");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32, ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
        var e = Assert.Throws<InvalidOperationException>(() => new Fiddler.Kernels.Generation.Generator(loaded.Model, null)
            .Run([1, 2, 3], new GenerationOptions { MaxNewTokens = 2, Sampling = SamplingOptions.Greedy }));
        Assert.Contains("no executor", e.Message);
    }
}

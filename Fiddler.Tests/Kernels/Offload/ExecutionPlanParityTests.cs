using Fiddler.Kernels.Generation;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

/// <summary>
/// Every execution plan computes the same function: all resident, all on the CPU, forced weight transfers, and
/// splits between them must reproduce Hugging Face's fp32 greedy tokens on the fixture models. Without a GPU the
/// "device" lane runs on the CPU device through the same executor, staging and routing code.
/// </summary>
public class ExecutionPlanParityTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>Routes by a fixed rule, for tests: resident → Gpu, others by <paramref name="pick"/>.</summary>
    private sealed class ForcedScheduler(Func<int, ExpertWork, ExpertRoute> pick) : IExpertScheduler
    {
        public List<LayerObservation> Observed { get; } = [];
        public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work) =>
            work.Select(w => w.Resident ? ExpertRoute.Gpu : pick(layer, w)).ToArray();
        public void Observe(LayerObservation o) => Observed.Add(o);
    }

    public static TheoryData<string, string, string> Plans()
    {
        var data = new TheoryData<string, string, string>();
        foreach (var model in new[] { "tiny-mha-top1", "tiny-gqa2-top2-swa8", "tiny-gqa4-top3" })
            foreach (var (residency, route) in new[] { ("none", "cpu"), ("none", "transfer"), ("none", "split"), ("half", "cpu"),
                         ("half", "split"), ("none", "cpu-simd"), ("half", "split-simd") })
                data.Add(model, residency, route);
        return data;
    }

    [Theory]
    [MemberData(nameof(Plans))]
    public void Generate_Plan_MatchesTransformersGreedyTokens(string model, string residency, string route)
    {
        string dir = Fixture(model);
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        var resident = Enumerable.Range(0, config.NumHiddenLayers).Select(l => Enumerable.Range(0, config.NumLocalExperts)
            .Select(e => residency == "half" && (l + e) % 2 == 0).ToArray()).ToArray();
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32, new ExpertResidency(resident, pinHostMemory: false)));
        var scheduler = new ForcedScheduler((layer, w) => route switch
        {
            "cpu" or "cpu-simd" => ExpertRoute.Cpu,
            "transfer" => ExpertRoute.Transfer,
            _ => (layer + w.Expert) % 3 == 0 ? ExpertRoute.Transfer : ExpertRoute.Cpu,
        });
        using var stager = new CopyStager(2, config.HiddenSize, config.IntermediateSize, ScalarType.Float32, CPU);
        using var pool = new Fiddler.Kernels.Experts.CpuWorkerPool(2);
        ICpuExpertBackend backend = route.EndsWith("-simd") ? new SimdCpuBackend(pool) : new TorchCpuBackend();
        loaded.Model.SetExpertExecutor(new OffloadExecutor(scheduler, backend, stager));

        using var refs = new SafetensorsFile(Path.Combine(dir, FixtureParity.ReferenceFile));
        for (int k = 0; refs.Contains($"p{k}.prompt_ids"); k++)
        {
            int[] prompt = ReadLongs(refs, $"p{k}.prompt_ids").Select(i => (int)i).ToArray();
            long[] expected = ReadLongs(refs, $"p{k}.greedy_tokens");
            var result = new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run(prompt,
                new GenerationOptions { MaxNewTokens = expected.Length, Sampling = SamplingOptions.Greedy, StopOnEos = false });
            Assert.Equal(expected, result.Tokens.Select(t => (long)t));
        }
        Assert.NotEmpty(scheduler.Observed);
        if (!route.StartsWith("cpu")) Assert.True(stager.BytesCopied > 0);
        Assert.Contains(scheduler.Observed, o => o.CpuTokens > 0 || route == "transfer");
    }

    [Fact]
    public void Forward_HostExpertWithoutExecutor_ThrowsClearError()
    {
        string dir = Fixture("tiny-mha-top1");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        var none = Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new bool[config.NumLocalExperts]).ToArray();
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32, new ExpertResidency(none, false)));
        var e = Assert.Throws<InvalidOperationException>(() => new Fiddler.Kernels.Generation.Generator(loaded.Model, null)
            .Run([1, 2, 3], new GenerationOptions { MaxNewTokens = 2, Sampling = SamplingOptions.Greedy }));
        Assert.Contains("no executor", e.Message);
    }

    private static unsafe long[] ReadLongs(SafetensorsFile file, string name)
    {
        var info = file.Info(name);
        var span = new ReadOnlySpan<byte>(file.GetPointer(name), (int)info.Length);
        return info.DType == SafetensorsDType.I64 ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(span).ToArray()
            : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(span).ToArray().Select(i => (long)i).ToArray();
    }
}

using Fiddler.Kernels.Config;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Verification;

/// <summary>
/// Every execution plan must compute the same function: fixture models run with experts resident or in host memory,
/// routed to the device, the CPU (libtorch or the SIMD kernel) or through weight transfers (CUDA streams on a GPU,
/// plain copies elsewhere), and must reproduce Hugging Face's fp32 greedy tokens. Used by the tests and by
/// <c>fiddler verify --plans</c> on GPU hosts.
/// </summary>
public static class PlanParity
{
    /// <summary>
    /// (residency, route): residency "none" or "half"; route cpu | cpu-simd | transfer | mixed | mixed-simd (some misses
    /// on the CPU, others transferred) | split | split-simd (every miss split between the CPU and a transfer, at a share
    /// that varies by layer and expert). Every plan merges the CPU results gated (<see cref="CpuMerge.Gated"/>, the
    /// default) unless its route ends in "+hostwait" (<see cref="CpuMerge.NonBlocking"/>) or "+blocking".
    /// </summary>
    public static readonly (string Residency, string Route)[] Plans =
        [("none", "cpu"), ("none", "cpu-simd"), ("none", "transfer"), ("none", "mixed"), ("half", "cpu"), ("half", "mixed"), ("half", "mixed-simd"),
         ("none", "split"), ("none", "split-simd"), ("half", "split-simd"), ("half", "mixed-simd+hostwait"), ("none", "split+blocking")];

    /// <summary>Routes by a fixed rule: resident → device, others by <paramref name="pick"/>.</summary>
    public sealed class ForcedScheduler(Func<int, ExpertWork, ExpertRoute> pick) : IExpertScheduler
    {
        public List<LayerObservation> Observed { get; } = [];
        public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work) =>
            work.Select(w => w.Resident ? ExpertRoute.Gpu : pick(layer, w)).ToArray();
        public void Observe(LayerObservation o) => Observed.Add(o);
    }

    /// <summary>
    /// The plans that also run beam search (<see cref="CheckBeams"/>): W beams decode as W rows per step, so the CPU lane,
    /// the row prefetch (≤ <see cref="OffloadExecutor.PrefetchRowLimit"/> rows) and the splits see batches above one.
    /// </summary>
    public static readonly (string Residency, string Route)[] BeamPlans =
        [("half", "mixed"), ("none", "split-simd"), ("half", "mixed-simd+hostwait"), ("none", "cpu-simd")];

    /// <summary>Runs one plan on one fixture model; returns a failure message per mismatching prompt (empty: pass).</summary>
    public static List<string> Check(string modelDir, string residency, string route, Device device, out long bytesCopied, out int cpuTokens) =>
        WithPlan(modelDir, residency, route, device, out bytesCopied, out cpuTokens, (model, failures) =>
        {
            using var refs = new SafetensorsFile(Path.Combine(modelDir, FixtureParity.ReferenceFile));
            for (int k = 0; refs.Contains($"p{k}.prompt_ids"); k++)
            {
                int[] prompt = FixtureParity.Longs(refs, $"p{k}.prompt_ids").Select(i => (int)i).ToArray();
                long[] expected = FixtureParity.Longs(refs, $"p{k}.greedy_tokens");
                var result = new Generation.Generator(model, null).Run(prompt,
                    new Generation.GenerationOptions { MaxNewTokens = expected.Length, Sampling = SamplingOptions.Greedy, StopOnEos = false });
                if (!result.Tokens.Select(t => (long)t).SequenceEqual(expected))
                    failures.Add($"{Path.GetFileName(modelDir)} p{k} {residency}/{route}: [{string.Join(",", result.Tokens)}] vs HF [{string.Join(",", expected)}]");
            }
        });

    /// <summary>
    /// Runs one plan's beam search on one fixture model against transformers' beams (<see cref="BeamFixture"/>): every
    /// hypothesis's tokens, and its log-probability within 1e-3. Returns a failure message per mismatch (empty: pass);
    /// a model without <see cref="BeamFixture.FileName"/> has nothing to check.
    /// </summary>
    public static List<string> CheckBeams(string modelDir, string residency, string route, Device device, out long bytesCopied, out int cpuTokens)
    {
        var beams = BeamFixture.LoadIfPresent(modelDir);
        if (beams is null) { bytesCopied = 0; cpuTokens = 0; return []; }
        return WithPlan(modelDir, residency, route, device, out bytesCopied, out cpuTokens, (model, failures) =>
        {
            for (int k = 0; k < beams.prompts.Length; k++)
            {
                var p = beams.prompts[k];
                var result = new Generation.BeamSearch(model).Run(p.prompt_ids, beams.num_beams, beams.new_tokens);
                string Got() => string.Join(" | ", result.Select(h => $"[{string.Join(",", h.Tokens)}] {h.LogProb:F4}"));
                if (result.Count != p.hf_sequences.Length)
                {
                    failures.Add($"{Path.GetFileName(modelDir)} beams p{k} {residency}/{route}: {result.Count} hypotheses vs HF {p.hf_sequences.Length}: {Got()}");
                    continue;
                }
                for (int i = 0; i < result.Count; i++)
                    if (!result[i].Tokens.SequenceEqual(p.hf_sequences[i]) || Math.Abs(result[i].LogProb - p.manual_scores[i]) > 1e-3)
                    {
                        failures.Add($"{Path.GetFileName(modelDir)} beams p{k} #{i} {residency}/{route}: {Got()}; HF [{string.Join(",", p.hf_sequences[i])}] {p.manual_scores[i]:F4}");
                        break;
                    }
            }
        });
    }

    private static List<string> WithPlan(string modelDir, string residency, string route, Device device, out long bytesCopied, out int cpuTokens,
        Action<Modules.MixtralForCausalLM, List<string>> body)
    {
        var merge = route.EndsWith("+hostwait", StringComparison.Ordinal) ? CpuMerge.NonBlocking
            : route.EndsWith("+blocking", StringComparison.Ordinal) ? CpuMerge.Blocking : CpuMerge.Gated;
        string plan = route;
        route = route.Split('+')[0];
        var config = MixtralConfig.Load(Path.Combine(modelDir, "config.json"));
        bool cudaDevice = device.type == DeviceType.CUDA;
        using var loaded = ModelLoader.Load(modelDir, new LoadOptions(device, ScalarType.Float32, ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts,
            (l, e) => residency == "half" && (l + e) % 2 == 0, cudaDevice)));
        var scheduler = new ForcedScheduler((layer, w) => route switch
        {
            "cpu" or "cpu-simd" => ExpertRoute.Cpu,
            "transfer" => ExpertRoute.Transfer,
            "split" or "split-simd" => ExpertRoute.Split(0.25 + 0.5 * ((layer + w.Expert) % 3) / 2.0),
            "mixed" or "mixed-simd" => (layer + w.Expert) % 3 == 0 ? ExpertRoute.Transfer : ExpertRoute.Cpu,
            _ => throw new ArgumentException($"unknown plan route '{plan}'"),
        });
        using IWeightStager stager = cudaDevice
            ? new CudaWeightStager(new WeightStager(device, new ExpertShape(config.HiddenSize, config.IntermediateSize, ScalarType.Float32), 2))
            : new CopyStager(2, config.HiddenSize, config.IntermediateSize, ScalarType.Float32, device);
        using var pool = new CpuWorkerPool(Math.Min(4, Environment.ProcessorCount));
        ICpuExpertBackend backend = route.EndsWith("-simd", StringComparison.Ordinal) ? new SimdCpuBackend(pool) : new TorchCpuBackend();
        using var executor = new OffloadExecutor(scheduler, backend, stager, merge);
        loaded.Model.SetExpertExecutor(executor);
        var failures = new List<string>();
        try
        {
            body(loaded.Model, failures);
        }
        finally
        {
            loaded.Model.SetExpertExecutor(null);
            HostPinning.Release(loaded.Model);
        }
        bytesCopied = stager.BytesCopied;
        cpuTokens = scheduler.Observed.Sum(o => o.CpuTokens);
        return failures;
    }
}

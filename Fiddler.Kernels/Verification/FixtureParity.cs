using Fiddler.Kernels.Generation;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Sampling;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Verification;

/// <summary>Outcome for one prompt of one fixture model.</summary>
public sealed record ParityReport(string Model, int Prompt, double PrefillMaxAbs, double PrefillRelative,
    double StepRelative, bool GreedyEqual, int Bf16FirstDivergence, bool Bf16Top5Agree, string Detail);

/// <summary>
/// Compares this engine with Hugging Face transformers on fixtures written by Fiddler.Tests/Fixtures/make_fixtures.py:
/// fp32 prefill and per-step logits (relative error = max |ours − HF| / max |HF|), 32 greedy tokens, and in bf16 the
/// top-5 agreement at the first step where greedy tokens diverge. Used by the tests (CPU) and by
/// <c>fiddler verify</c> on GPU hosts, so both devices run the same checks.
/// </summary>
public static class FixtureParity
{
    public const string ReferenceFile = "reference.safetensors";

    public static IEnumerable<string> ModelDirectories(string fixturesDir) =>
        System.IO.Directory.GetDirectories(fixturesDir).Where(d => File.Exists(Path.Combine(d, ReferenceFile))).Order();

    public static List<ParityReport> Check(string modelDir, Device device)
    {
        var reports = new List<ParityReport>();
        using var fp32 = ModelLoader.Load(modelDir, new LoadOptions(device, ScalarType.Float32));
        using var bf16 = ModelLoader.Load(modelDir, new LoadOptions(device, ScalarType.BFloat16));
        using var refs = new SafetensorsFile(Path.Combine(modelDir, ReferenceFile));
        for (int k = 0; refs.Contains($"p{k}.prompt_ids"); k++)
            reports.Add(CheckPrompt(Path.GetFileName(modelDir), k, refs, fp32.Model, bf16.Model));
        return reports;
    }

    private static ParityReport CheckPrompt(string name, int k, SafetensorsFile refs, MixtralForCausalLM fp32, MixtralForCausalLM bf16)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long[] prompt = Load(refs, $"p{k}.prompt_ids").to(ScalarType.Int64).data<long>().ToArray();
        var hfPrefill = Load(refs, $"p{k}.prefill_logits");                     // [T, V]
        long[] hfGreedy = Load(refs, $"p{k}.greedy_tokens").to(ScalarType.Int64).data<long>().ToArray();
        var hfSteps = Load(refs, $"p{k}.step_logits");                           // [G, V]
        long[] hfBf16 = Load(refs, $"p{k}.bf16_greedy_tokens").to(ScalarType.Int64).data<long>().ToArray();
        var hfBf16Top5 = Load(refs, $"p{k}.bf16_step_top5").to(ScalarType.Int64); // [G, 5]

        // Prefill logits at every prompt position, then the per-step logits with HF's greedy tokens fed back.
        using var cache = fp32.NewCache(prompt.Length + hfGreedy.Length);
        var prefill = fp32.Forward(tensor(prompt).unsqueeze(0), cache, allPositions: true)[0].cpu();
        var (maxAbs, rel) = Compare(prefill, hfPrefill);
        var steps = new List<Tensor> { prefill[-1] };
        for (int i = 0; i < hfGreedy.Length - 1; i++)
            steps.Add(fp32.Forward(tensor(new[] { hfGreedy[i] }).unsqueeze(0), cache)[0].cpu());
        var (_, stepRel) = Compare(stack(steps), hfSteps);

        var greedy = new Generation.Generator(fp32, null).Run(prompt.Select(i => (int)i).ToArray(),
            new GenerationOptions { MaxNewTokens = hfGreedy.Length, Sampling = SamplingOptions.Greedy, StopOnEos = false });
        bool greedyEqual = greedy.Tokens.Select(t => (long)t).SequenceEqual(hfGreedy);

        // bf16: greedy tokens may legitimately diverge; where they first do, each side's choice must be in the other's top-5.
        var ourTop5 = new List<int[]>();
        var bf = new Generation.Generator(bf16, null).Run(prompt.Select(i => (int)i).ToArray(),
            new GenerationOptions { MaxNewTokens = hfBf16.Length, Sampling = SamplingOptions.Greedy, StopOnEos = false, TopLogprobs = 5 },
            t => { if (t.Id >= 0) ourTop5.Add(t.Top.Select(p => p.Id).ToArray()); });
        int diverge = Enumerable.Range(0, hfBf16.Length).FirstOrDefault(i => bf.Tokens[i] != hfBf16[i], -1);
        bool agree = diverge < 0 || (ourTop5[diverge].Contains((int)hfBf16[diverge])
            && hfBf16Top5[diverge].data<long>().ToArray().Contains(bf.Tokens[diverge]));
        // A near-tie in a router (top-1 routing especially) can flip under bf16 rounding and change the distribution
        // entirely. Where that happens, the exact (fp32) model on the same context arbitrates: if it chooses our token,
        // HF's bf16 run is the one that left the exact answer, and our bf16 run is not at fault.
        long exact = -1;
        if (!agree)
        {
            using var exactCache = fp32.NewCache(prompt.Length + diverge);
            long[] context = [.. prompt, .. hfBf16.Take(diverge)];
            exact = fp32.Forward(tensor(context).unsqueeze(0), exactCache).argmax(-1).item<long>();
            agree = exact == bf.Tokens[diverge];
        }
        string detail = greedyEqual ? "" : $"fp32 greedy ours [{string.Join(",", greedy.Tokens)}] hf [{string.Join(",", hfGreedy)}]";
        if (diverge >= 0)
            detail += $" bf16 step {diverge}: ours {bf.Tokens[diverge]} top5 [{string.Join(",", ourTop5[diverge])}], " +
                $"hf {hfBf16[diverge]} top5 [{string.Join(",", hfBf16Top5[diverge].data<long>().ToArray())}]" +
                (exact >= 0 ? $"; exact fp32 on HF's context chooses {exact}" : "");
        return new ParityReport(name, k, maxAbs, rel, stepRel, greedyEqual, diverge, agree, detail);
    }

    /// <summary>(max |a − b|, max |a − b| / max |b|).</summary>
    public static (double MaxAbs, double Relative) Compare(Tensor ours, Tensor reference)
    {
        if (!ours.shape.SequenceEqual(reference.shape))
            throw new InvalidDataException($"shape [{string.Join(",", ours.shape)}] vs reference [{string.Join(",", reference.shape)}]");
        double maxAbs = (ours - reference).abs().max().item<float>();
        double scale = reference.abs().max().item<float>();
        return (maxAbs, maxAbs / Math.Max(scale, 1e-30));
    }

    /// <summary>An integer reference tensor (I64 or I32) as longs.</summary>
    public static long[] Longs(SafetensorsFile file, string name)
    {
        using var t = Load(file, name);
        using var l = t.to(ScalarType.Int64);
        return l.data<long>().ToArray();
    }

    private static unsafe Tensor Load(SafetensorsFile file, string name)
    {
        var info = file.Info(name);
        var t = empty(info.Shape, info.DType.ToScalarType(), CPU);
        Buffer.MemoryCopy(file.GetPointer(name), (void*)TensorMemory.DataPtr(t), info.Length, info.Length);
        return t;
    }
}

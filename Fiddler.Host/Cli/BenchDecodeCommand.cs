using System.CommandLine;
using System.Diagnostics;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler bench-decode</c>: decode-step latency of a named full-size config with random weights, all on one device,
/// optionally truncated to a few layers. A sanity number for the engine core (the offloading bench is separate).
/// </summary>
public static class BenchDecodeCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Named config", DefaultValueFactory = _ => "mixtral-8x7b" };
        var layers = new Option<int?>("--layers") { Description = "Keep only the first N decoder layers" };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cuda" };
        var dtype = new Option<string>("--dtype") { DefaultValueFactory = _ => "bfloat16" };
        var promptTokens = new Option<int>("--prompt-tokens") { DefaultValueFactory = _ => 16 };
        var newTokens = new Option<int>("--new-tokens") { DefaultValueFactory = _ => 64 };
        var libtorch = new Option<string?>("--libtorch");
        var stages = new Option<bool>("--stages") { Description = "Also time each stage (synchronises the device per stage)" };
        var spin = new Option<int?>("--readback-spin-us") { Description = "µs the host polls a routing read-back before sleeping on it (0..100000; default 20000)" };
        var command = new Command("bench-decode", "Decode-step latency with random full-size weights on one device");
        foreach (var o in new Option[] { config, layers, device, dtype, promptTokens, newTokens, libtorch, stages, spin }) command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            var c = MixtralConfig.Named(r.GetValue(config)!);
            if (r.GetValue(layers) is int n) c = c with { NumHiddenLayers = n };
            c.Validate();
            int p = r.GetValue(promptTokens), g = r.GetValue(newTokens);
            if (p < 1 || g < 2) throw new ArgumentException("--prompt-tokens must be ≥ 1 and --new-tokens ≥ 2");
            if (r.GetValue(spin) is int us)
            {
                if (us is < 0 or > 100_000) throw new ArgumentException($"--readback-spin-us: {us} is not in 0..100000");
                HostReadback.SpinMicroseconds = us;
            }
            var clock = Stopwatch.StartNew();
            using var model = new MixtralForCausalLM(c, TorchRuntime.ParseDType(r.GetValue(dtype)!), dev);
            DummyWeights.Fill(model);
            Console.WriteLine($"{r.GetValue(config)} layers={c.NumHiddenLayers} device={dev} dtype={r.GetValue(dtype)} " +
                $"params={model.parameters().Sum(x => x.numel()) / 1e9:F2} B, init {clock.Elapsed.TotalSeconds:F1} s");
            using var noGrad = no_grad();
            using var cache = model.NewCache(p + g + (r.GetValue(stages) ? 16 : 0));
            var prompt = randint(0, c.VocabSize, [1, p], dtype: ScalarType.Int64);
            clock.Restart();
            var logits = model.Forward(prompt, cache);
            long next = logits.argmax(-1).item<long>();
            double prefillMs = clock.Elapsed.TotalMilliseconds;
            var steps = new List<double>();
            for (int i = 1; i < g; i++)
            {
                clock.Restart();
                logits.Dispose();
                logits = model.Forward(tensor(new[] { next }).unsqueeze(0), cache);
                next = logits.argmax(-1).item<long>(); // the host needs the token: this syncs like real decoding
                steps.Add(clock.Elapsed.TotalMilliseconds);
            }
            logits.Dispose();
            var warm = steps.Skip(Math.Min(3, steps.Count - 1)).Order().ToList(); // first steps warm up allocators
            Console.WriteLine($"prefill {p} tokens: {prefillMs:F1} ms; decode step: median {warm[warm.Count / 2]:F2} ms, " +
                $"min {warm[0]:F2} ms, mean {warm.Average():F2} ms over {steps.Count} steps");
            if (r.GetValue(stages))
            {
                StageTimer.Enable(dev);
                for (int i = 0; i < 16; i++)
                {
                    using var l = model.Forward(tensor(new[] { next }).unsqueeze(0), cache);
                    next = l.argmax(-1).item<long>();
                    if (cache.Length + 1 >= cache.Capacity) break;
                }
                StageTimer.Disable();
                using var x = ones(4096, dtype: ScalarType.BFloat16, device: dev);
                var opClock = Stopwatch.StartNew();
                for (int i = 0; i < 1000; i++) (x + 1).Dispose();
                if (dev.type == DeviceType.CUDA) cuda.synchronize(dev);
                Console.WriteLine($"  one elementwise op: {opClock.Elapsed.TotalMilliseconds:F3} µs (1000 ops, queued then synchronised)");
                foreach (var (stage, ms, count) in StageTimer.Snapshot())
                    Console.WriteLine($"  stage {stage,-12} {ms / count,9:F3} ms x {count}");
            }
            return 0;
        });
        return command;
    }
}

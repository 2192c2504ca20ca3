using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler bench</c>: decode tok/s and time to first token of an offloaded model under a GPU budget, with the GPU
/// hit rate, CPU expert bandwidth, PCIe traffic and router prediction accuracy; prints a table and writes JSON.
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face checkpoint directory" };
        var config = new Option<string?>("--config") { Description = "Named config (with --dummy-weights), e.g. mixtral-8x7b" };
        var dummy = new Option<bool>("--dummy-weights") { Description = "Random full-size weights generated in memory" };
        var budget = new Option<string?>("--gpu-budget") { Description = "GPU memory for weights + KV cache, e.g. 24GiB (default: all on GPU)" };
        var popularity = new Option<string?>("--popularity") { Description = "popularity.json from `fiddler profile`" };
        var promptTokens = new Option<string>("--prompt-tokens") { DefaultValueFactory = _ => "16,128,512" };
        var newTokens = new Option<int>("--new-tokens") { DefaultValueFactory = _ => 64 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cuda" };
        var routing = new Option<string>("--routing") { Description = "auto | whole (auto without dividing experts) | cpu | transfer", DefaultValueFactory = _ => "auto" };
        var cpuThreads = new Option<int>("--cpu-threads") { Description = "CPU expert worker threads (default: logical CPUs − 1)" };
        var merge = new Option<string>("--merge") { Description = "How CPU results reach the GPU: gated (the GPU waits for them, the host goes on) | nonblocking (the host waits, then copies without blocking) | blocking", DefaultValueFactory = _ => "gated" };
        var noAdapt = new Option<bool>("--no-adapt") { Description = "Plan with calibrated CPU times only (do not learn the engine's CPU slowdown)" };
        var contention = new Option<double?>("--cpu-contention") { Description = "CPU slowdown factor while weights stream (router model; the starting value when learning; default 1.25)" };
        var layers = new Option<int?>("--layers") { Description = "Keep only the first N layers (quick runs)" };
        var baseline = new Option<string?>("--baseline") { Description = "JSON written by bench/seed_baseline.py in the same session" };
        var outDir = new Option<string>("--out") { DefaultValueFactory = _ => "bench/results" };
        var profile = new Option<string?>("--profile") { Description = "Latency-model cache file" };
        var libtorch = new Option<string?>("--libtorch");
        var spin = new Option<int?>("--readback-spin-us") { Description = "µs the host polls a routing read-back before sleeping on it (0..100000; default 20000)" };
        var noWarmup = new Option<bool>("--no-warmup") { Description = "Skip the engine's start-up warm-up (one prompt per batch size the router learns apart, then decode steps; fiddler serve runs it before taking requests): each size's first prompt then plans with other sizes' learned speeds" };
        var repeats = new Option<int>("--decode-repeats") { Description = "Decode windows of --new-tokens − 1 steps, back to back; decode_tok_s is their median (default 1)", DefaultValueFactory = _ => 1 };
        var slots = new Option<int>("--staging-slots") { Description = "GPU staging buffers for streamed experts, 1..8, each one expert's size out of the budget (default 2: one fills while the GPU computes from the other)", DefaultValueFactory = _ => 2 };
        var actors = new Option<bool>("--actors") { Description = "Also decode through the actor runtime and report its overhead (on the same CPU pool as the direct rounds unless --actor-cpu-threads is given)" };
        var noPrefetch = new Option<bool>("--no-row-prefetch") { Description = "Copy a decode layer's rows to the host after its routing, not with it (for comparison)" };
        var poolLane = new Option<bool>("--lane-on-thread-pool") { Description = "Start CPU lanes on the .NET thread pool, not a dedicated thread (for comparison)" };
        var spinGate = new Option<bool>("--gate-spin-kernel") { Description = "The GPU waits for CPU lanes in a spin kernel instead of the driver's stream wait" };
        var abBalance = new Option<int>("--ab-balance") { Description = "After the decode windows, N pairs of windows with the lane-order balance on and off, in this process (0..50; reports ab_balance)" };
        var abThreads = new Option<int>("--ab-cpu-threads") { Description = "After the decode windows, pairs of windows with the CPU expert pool on all its workers and on N participants, each with its own learned speeds (reports ab_cpu_threads)" };
        var batchRate = new Option<double?>("--batch-adapt-rate") { Description = "How fast prefill/beam layers learn the lanes' speeds, in (0, 1]; default 0.25; the decode layers' rate is 0.05" };
        var actorThreadsOpt = new Option<int>("--actor-cpu-threads") { Description = "The CPU pool's participants during the --actors rounds, fewer than the direct rounds' (default: the same)" };
        var actorRoundsOpt = new Option<int>("--actor-rounds") { Description = "Rounds of --actors, each one direct and one actor decode (1..50, default 5)", DefaultValueFactory = _ => 5 };
        var abKernel = new Option<string?>("--ab-kernel") { Description = "After the decode windows, pairs of windows with the CPU expert kernel's tuning as configured and as PREFETCH_BYTES,LEVEL,NEXT_ROWS[,ITEM_KB[,ROWS[,TAIL_KB]]] (e.g. 2048,l1,1 or 1024,l1,0,512,spread,0: ROWS spread or adjacent, TAIL_KB the size of each phase's last items, 0 for off; parts left out keep the configured ones), each with its own learned speeds (reports ab_kernel)" };
        var abPairsOpt = new Option<int>("--ab-pairs") { Description = "Pairs of windows for --ab-cpu-threads and --ab-kernel (1..50, default 6)", DefaultValueFactory = _ => 6 };
        var noPipeline = new Option<bool>("--no-decode-pipeline") { Description = "Decode the windows step by step: the host reads each token before it queues the next step (for comparison; the generator, and so the --actors rounds, pipeline greedy decoding)" };
        var abPipeline = new Option<int>("--ab-pipeline") { Description = "After the decode windows, N pairs of windows pipelined and step by step, in this process (0..50; reports ab_pipeline)" };
        var noReadScales = new Option<bool>("--no-read-scales") { Description = "Do not read every host expert at start to plan each one's CPU time by this host's memory speed (for comparison)" };
        var abReadScales = new Option<int>("--ab-read-scales") { Description = "After the decode windows, N pairs of windows routing with and without the host experts' read-speed scales, each with its own learned speeds (0..50; reports ab_read_scales)" };
        var ceilingWindowsOpt = new Option<int>("--ceiling-windows") { Description = "After the decode windows, N more windows each followed by the host's lane-ceiling probe, to see whether the decode rate follows the DRAM share the host gives at that moment (0..50; CUDA; reports ceiling_windows)" };
        var noBySpeed = new Option<bool>("--no-place-by-read-speed") { Description = "Place the GPU's experts by popularity alone, without first reading every expert from host memory to put the costliest to read there (for comparison)" };
        var noBalance = new Option<bool>("--no-balance-last-lane") { Description = "Balance decode layers' lanes by their mean times only, not also by which one ended last (for comparison)" };
        var command = new Command("bench", "Offloaded decode and prefill benchmark");
        foreach (var o in new Option[] { model, config, dummy, budget, popularity, promptTokens, newTokens, device, routing, contention, noAdapt, merge, cpuThreads, layers, baseline, outDir, profile, libtorch, actors, spin, repeats, slots, noPrefetch, poolLane, spinGate, noBalance, abBalance, abThreads, abKernel, abPairsOpt, actorRoundsOpt, actorThreadsOpt, batchRate, noWarmup, noPipeline, abPipeline, noReadScales, abReadScales, ceilingWindowsOpt, noBySpeed })
            command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            int[] prompts = r.GetValue(promptTokens)!.Split(',').Select(s => int.TryParse(s, out int v) && v > 0 ? v
                : throw new ArgumentException($"--prompt-tokens: '{s}' is not a positive integer")).ToArray();
            int generate = r.GetValue(newTokens);
            if (r.GetValue(spin) is int us)
            {
                if (us is < 0 or > 100_000) throw new ArgumentException($"--readback-spin-us: {us} is not in 0..100000");
                HostReadback.SpinMicroseconds = us;
            }
            if (generate < 2) throw new ArgumentException("--new-tokens must be ≥ 2");
            int decodeRepeats = r.GetValue(repeats);
            if (decodeRepeats is < 1 or > 100) throw new ArgumentException($"--decode-repeats: {decodeRepeats} is not in 1..100");
            int abPairs = r.GetValue(abBalance);
            if (abPairs is < 0 or > 50) throw new ArgumentException($"--ab-balance: {abPairs} is not in 0..50");
            if (abPairs > 0 && (r.GetValue(noAdapt) || r.GetValue(routing) is "cpu" or "transfer"))
                throw new ArgumentException("--ab-balance needs the learned router with both lanes: not with --no-adapt, --routing cpu or --routing transfer");
            int pipelinePairs = r.GetValue(abPipeline);
            if (pipelinePairs is < 0 or > 50) throw new ArgumentException($"--ab-pipeline: {pipelinePairs} is not in 0..50");
            if (pipelinePairs > 0 && r.GetValue(noPipeline))
                throw new ArgumentException("--ab-pipeline compares the decode pipeline with step-by-step decoding: leave out --no-decode-pipeline");
            int scalePairs = r.GetValue(abReadScales);
            if (scalePairs is < 0 or > 50) throw new ArgumentException($"--ab-read-scales: {scalePairs} is not in 0..50");
            if (scalePairs > 0 && r.GetValue(noReadScales))
                throw new ArgumentException("--ab-read-scales compares routing with and without the read-speed scales: leave out --no-read-scales");
            if (scalePairs > 0 && (r.GetValue(noAdapt) || r.GetValue(routing) is "cpu" or "transfer"))
                throw new ArgumentException("--ab-read-scales needs the learned router with both lanes: not with --no-adapt, --routing cpu or --routing transfer");
            int ceilingWindows = r.GetValue(ceilingWindowsOpt);
            if (ceilingWindows is < 0 or > 50) throw new ArgumentException($"--ceiling-windows: {ceilingWindows} is not in 0..50");
            int fewerThreads = r.GetValue(abThreads), threadPairs = r.GetValue(abPairsOpt);
            if (threadPairs is < 1 or > 50) throw new ArgumentException($"--ab-pairs: {threadPairs} is not in 1..50");
            int actorRounds = r.GetValue(actorRoundsOpt);
            if (actorRounds is < 1 or > 50) throw new ArgumentException($"--actor-rounds: {actorRounds} is not in 1..50");
            if (!r.GetValue(actors) && r.GetResult(actorRoundsOpt) is { Implicit: false })
                throw new ArgumentException("--actor-rounds counts the rounds of --actors: give that too");
            int actorThreads = r.GetValue(actorThreadsOpt);
            bool actorThreadsGiven = r.GetResult(actorThreadsOpt) is { Implicit: false };
            if (actorThreadsGiven && !r.GetValue(actors)) throw new ArgumentException("--actor-cpu-threads sets the pool of the --actors rounds: give that too");
            if (fewerThreads < 0) throw new ArgumentException($"--ab-cpu-threads: {fewerThreads} is not a positive participant count");
            Fiddler.Kernels.Experts.CpuKernelSettings? otherKernel = null;
            if (r.GetValue(abKernel) is string spec)
                try { otherKernel = Fiddler.Kernels.Experts.CpuKernelSettings.Parse(spec); }
                catch (ArgumentException e) { throw new ArgumentException($"--ab-kernel: {e.Message}"); }
            if (fewerThreads == 0 && otherKernel is null && r.GetResult(abPairsOpt) is { Implicit: false })
                throw new ArgumentException("--ab-pairs counts the pairs of --ab-cpu-threads or --ab-kernel: give one of those too (--ab-balance takes its own count)");
            if ((fewerThreads > 0 || otherKernel is not null) && (r.GetValue(noAdapt) || r.GetValue(routing) is "cpu" or "transfer"))
                throw new ArgumentException("--ab-cpu-threads and --ab-kernel need the learned router with both lanes: not with --no-adapt, --routing cpu or --routing transfer");
            int stagingSlots = r.GetValue(slots);
            if (stagingSlots is < 1 or > 8) throw new ArgumentException($"--staging-slots: {stagingSlots} is not in 1..8");
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            var options = new EngineOptions
            {
                ModelDir = r.GetValue(model), NamedConfig = r.GetValue(config), DummyWeights = r.GetValue(dummy), Device = dev,
                GpuBudgetBytes = r.GetValue(budget) is { } b ? MemoryBudget.Parse(b) : null, PopularityPath = r.GetValue(popularity),
                ContextTokens = Math.Max(prompts.Max() + generate, BenchRun.ContextTokens(prompts, generate, decodeRepeats)), Layers = r.GetValue(layers),
                Routing = r.GetValue(routing) switch
                {
                    "auto" or "whole" => RoutingMode.Auto, "cpu" => RoutingMode.CpuOnly, "transfer" => RoutingMode.TransferOnly,
                    var x => throw new ArgumentException($"--routing: '{x}' (use auto, whole, cpu or transfer)"),
                },
                SplitExperts = r.GetValue(routing) != "whole",
                AdaptCpuModel = !r.GetValue(noAdapt),
                CpuThreads = r.GetValue(cpuThreads),
                StagingSlots = stagingSlots,
                PrefetchRows = !r.GetValue(noPrefetch),
                DedicatedLaneThread = !r.GetValue(poolLane),
                SpinKernelGate = r.GetValue(spinGate),
                BalanceLastLane = !r.GetValue(noBalance),
                ExpertReadScales = !r.GetValue(noReadScales),
                PlaceByReadSpeed = !r.GetValue(noBySpeed),
                Merge = r.GetValue(merge) switch
                {
                    "gated" => CpuMerge.Gated, "nonblocking" => CpuMerge.NonBlocking, "blocking" => CpuMerge.Blocking,
                    var x => throw new ArgumentException($"--merge: '{x}' (use gated, nonblocking or blocking)"),
                },
            };
            if (r.GetValue(contention) is double c) options = options with { CpuContention = c };
            if (r.GetValue(batchRate) is double br)
                options = br is > 0 and <= 1 ? options with { BatchAdaptRate = br } : throw new ArgumentException($"--batch-adapt-rate: {br} is not in (0, 1]");
            if (r.GetValue(profile) is { } pf) options = options with { ProfilePath = pf };
            if ((abPairs > 0 || fewerThreads > 0 || otherKernel is not null || scalePairs > 0) && options.GpuBudgetBytes is null)
                throw new ArgumentException("--ab-balance, --ab-cpu-threads, --ab-kernel and --ab-read-scales compare the CPU lane: give --gpu-budget");
            if (ceilingWindows > 0 && options.GpuBudgetBytes is null)
                throw new ArgumentException("--ceiling-windows probes the lanes that move host experts: give --gpu-budget");
            if (fewerThreads > 0 && fewerThreads >= OffloadEngine.DefaultCpuThreads(options)) // before building: that takes minutes at full size
                throw new ArgumentException($"--ab-cpu-threads: {fewerThreads} is not fewer than the pool's {OffloadEngine.DefaultCpuThreads(options)} participants");
            if (actorThreadsGiven && (actorThreads < 1 || actorThreads > OffloadEngine.DefaultCpuThreads(options))) // before building, as above
                throw new ArgumentException($"--actor-cpu-threads: {actorThreads} is not in 1..{OffloadEngine.DefaultCpuThreads(options)} (the direct rounds' pool)");
            var clock = Stopwatch.StartNew();
            using var engine = OffloadEngine.Create(options, Console.WriteLine);
            Console.WriteLine($"built in {clock.Elapsed.TotalSeconds:F1} s; cpu backend {engine.CpuBackend ?? "-"}");
            var result = BenchRun.Run(engine, prompts, generate, decodeRepeats, abPairs, fewerThreads > 0 ? (fewerThreads, threadPairs) : null, warmup: !r.GetValue(noWarmup),
                abKernel: otherKernel is { } ok ? (ok, threadPairs) : null, decodePipeline: !r.GetValue(noPipeline), abPipeline: pipelinePairs, abReadScales: scalePairs,
                ceilingWindows: ceilingWindows);
            if (r.GetValue(actors))
            {
                // The actor rounds run the CPU pool as serve does (as the direct rounds: the actors share the pool's caller
                // thread), unless --actor-cpu-threads narrows it.
                int? actorPool = actorThreads > 0 && engine.CpuPool is not null ? actorThreads : null;
                var cmp = BenchRun.ActorOverhead(engine, prompts[0], generate, options.Merge, actorRounds,
                    prefetchRows: options.PrefetchRows, spinKernelGate: options.SpinKernelGate, actorParticipants: actorPool).GetAwaiter().GetResult();
                result = result with
                {
                    GeneratorTokS = cmp.Direct, ActorsTokS = cmp.Actors, ActorOverheadPct = cmp.OverheadPct, GeneratorRuns = cmp.DirectRuns, ActorRuns = cmp.ActorRuns,
                    ActorRoundsMemoryGiB = cmp.MemoryGiB, ActorCpuParticipants = cmp.ActorParticipants,
                    ActorPathStages = engine.Scheduler is null ? null : (cmp.DirectStages, cmp.ActorStages),
                };
            }
            var report = BenchRun.Report(engine, options, result, r.GetValue(baseline), GpuName());
            Console.WriteLine(JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            if (engine.Scheduler is { } s) Console.WriteLine(s.Router.Report());
            Directory.CreateDirectory(r.GetValue(outDir)!);
            string file = Path.Combine(r.GetValue(outDir)!, $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{report["model"]}-{report["gpu_budget_gib"]}gib.json");
            File.WriteAllText(file, JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"wrote {file}");
            return 0;
        });
        return command;
    }

    private static string GpuName()
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("nvidia-smi", "--query-gpu=name --format=csv,noheader") { RedirectStandardOutput = true });
            string name = p!.StandardOutput.ReadToEnd().Trim().Split('\n')[0];
            p.WaitForExit();
            return name.Length > 0 ? name : "unknown";
        }
        catch (System.ComponentModel.Win32Exception) { return "none"; }
    }
}

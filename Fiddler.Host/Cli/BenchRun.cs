using System.Diagnostics;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>The measurements of <c>fiddler bench</c>: TTFT per prompt length, then decode on the first prompt.</summary>
public static partial class BenchRun
{
    public sealed record Result(Dictionary<string, double> TtftS, double DecodeTokS, double HitRate, double CpuGbS,
        double PcieGb, long CpuExperts, long Transfers, Dictionary<string, double> StageMs)
    {
        public long SplitExperts { get; init; }
        /// <summary>TTFT per prompt length right after a prefill of the same length (the router's batch factors learned at
        /// that size); <see cref="Result.TtftS"/> is the first of its size.</summary>
        public Dictionary<string, double> TtftWarmS { get; init; } = [];
        public BalanceComparison? AbBalance { get; init; }
        public ThreadsComparison? AbCpuThreads { get; init; }
        public KernelComparison? AbKernel { get; init; }
        public PipelineComparison? AbPipeline { get; init; }
        public ReadScalesComparison? AbReadScales { get; init; }
        /// <summary>Whether the decode windows ran through the decode pipeline.</summary>
        public bool DecodePipeline { get; init; } = true;
        /// <summary>GPU GiB in use after each prompt's prefill (CUDA), in the order the prompts ran: libtorch's cache keeps
        /// its blocks, so each value is the most the process held up to that prompt.</summary>
        public Dictionary<string, double>? GpuMemoryAfterPrefillGiB { get; init; }
        public Dictionary<string, double>? Executor { get; init; }
        public Dictionary<string, Dictionary<string, double>>? TtftExecutor { get; init; }
        public double? GeneratorTokS { get; init; }
        public double? ActorsTokS { get; init; }
        public double? ActorOverheadPct { get; init; }
        public double[]? GeneratorRuns { get; init; }
        public double[]? ActorRuns { get; init; }
        public double?[]? ActorRoundsMemoryGiB { get; init; }
        public int? ActorCpuParticipants { get; init; }
        /// <summary>The host-side stages per layer of the direct and the actor rounds (medians), with offloading.</summary>
        public (PathStages Direct, PathStages Actors)? ActorPathStages { get; init; }
        /// <summary>Each decode window's tok/s, in order (<see cref="DecodeTokS"/> is their median).</summary>
        public double[] DecodeRuns { get; init; } = [];
        /// <summary>This host's lane ceiling, measured after the decode windows (null off CUDA).</summary>
        public Fiddler.Kernels.Offload.LaneCeiling.Result? Ceiling { get; init; }
        /// <summary>Expert bytes per decode token that were not resident on the GPU (the lanes' load).</summary>
        public double OffloadedBytesPerToken { get; init; }
        /// <summary>The engine's start-up warm-up (<see cref="WarmupPlan"/>) before the measurements: its prompt lengths
        /// (null: only the bench's own short warm-up of kernels and allocator ran) and how long it took.</summary>
        public int[]? WarmupPrompts { get; init; }
        public double WarmupS { get; init; }
        /// <summary>The .NET GC during the decode windows: collections per generation, pause and allocation per token.</summary>
        public Dictionary<string, double>? GcDecode { get; init; }
        /// <summary>The SIMD kernel's parallel regions during the decode windows: count, mean time, and its own GB/s inside
        /// them (the CPU lane's rate, <c>cpu_gb_s</c>, also counts what the lane does around them).</summary>
        public Dictionary<string, double>? KernelDecode { get; init; }
        /// <summary>The CPU pool's regions in the decode windows (<see cref="Fiddler.Kernels.Experts.CpuWorkerPool.Stats"/>).</summary>
        public Dictionary<string, double>? PoolDecode { get; init; }
        /// <summary>Every host expert's plain read, after the windows (<see cref="Fiddler.Kernels.Offload.HostExpertReads"/>).</summary>
        public Fiddler.Kernels.Offload.HostExpertReads.Result? HostReads { get; init; }
        /// <summary><c>--ceiling-windows</c>: decode windows each followed by a lane-ceiling probe.</summary>
        public CeilingWindows? CeilingRounds { get; init; }
    }

    private const int StagedSteps = 4;

    /// <summary>The positions the run needs: the longest prompt's prefill, and the decode windows after the first prompt
    /// (plus the staged steps). The engine sizes its KV-cache reserve from this.</summary>
    public static int ContextTokens(int[] prompts, int generate, int decodeRepeats) =>
        Math.Max(prompts.Max() + 1, prompts[0] + (generate - 1) * decodeRepeats + 1 + StagedSteps);

    /// <summary>The first largest logit's index (torch.argmax's choice).</summary>
    private static long ArgMax(float[] logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    private static double Median(IEnumerable<double> v)
    {
        var a = v.Order().ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    /// <param name="decodeRepeats">Decode windows of <paramref name="generate"/> − 1 steps each, one after the other on
    /// one sequence (no prefill between them, so the router's counters see decode layers only); tok/s is their median.</param>
    /// <param name="abPairs">After the windows: pairs of windows with the lane-order balance on and off
    /// (<see cref="BalanceComparison"/>); 0: none.</param>
    /// <param name="abThreads">After those: pairs of windows with the CPU pool on all its participants and on fewer
    /// (<see cref="ThreadsComparison"/>); null: none.</param>
    /// <param name="abKernel">After those: pairs of windows with the CPU kernel's tuning as configured and as given
    /// (<see cref="KernelComparison"/>); null: none.</param>
    /// <param name="decodePipeline">Decode windows through <see cref="Fiddler.Kernels.Generation.DecodePipeline"/>, as the
    /// generator runs greedy decoding (false: step, read the token, step).</param>
    /// <param name="abPipeline">After the decode windows, before the comparisons below: pairs of windows pipelined and not
    /// (<see cref="PipelineComparison"/>); 0: none.</param>
    /// <param name="abReadScales">After those: pairs of windows routing with and without the host experts' read-speed
    /// scales (<see cref="ReadScalesComparison"/>); 0: none.</param>
    /// <param name="warmup">Run the engine's start-up warm-up first (<see cref="WarmupPlan"/>: one prompt per batch size
    /// the router learns apart, then decode steps), as <c>fiddler serve</c> does before it takes requests; TTFT is then
    /// what a server's first request of each size sees. False: only a 16-token prompt and 4 decode steps (kernels,
    /// allocator, staging slots), so each size's first prompt plans with factors learned at other sizes.</param>
    public static Result Run(OffloadEngine engine, int[] prompts, int generate, int decodeRepeats = 1, int abPairs = 0,
        (int Fewer, int Pairs)? abThreads = null, bool warmup = true, (Fiddler.Kernels.Experts.CpuKernelSettings Other, int Pairs)? abKernel = null,
        bool decodePipeline = true, int abPipeline = 0, int abReadScales = 0, int ceilingWindows = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(decodeRepeats, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(abPairs);
        ArgumentOutOfRangeException.ThrowIfNegative(ceilingWindows);
        var model = engine.Model;
        using var noGrad = no_grad();
        var rng = new Random(0);
        long[] Prompt(int n) => Enumerable.Range(0, n).Select(_ => (long)rng.Next(3, engine.Config.VocabSize)).ToArray();

        // Every cache of the run has the same capacity, so each reuses the blocks the previous one freed in libtorch's
        // caching allocator (a slightly larger one could not: with a 4096-token prompt the GPU held two KV caches).
        int capacity = ContextTokens(prompts, generate, decodeRepeats);
        var warmClock = Stopwatch.StartNew();
        int[]? warmupPrompts = warmup && engine.Scheduler is not null && WarmupPlan.PromptLengths(engine.Config, capacity) is { Length: > 0 } planned
            ? planned : null;
        if (warmupPrompts is null)
        {
            // Kernels, allocator, staging slots.
            using var warm = model.NewCache(24);
            model.Forward(tensor(Prompt(16)).unsqueeze(0), warm).Dispose();
            for (int i = 0; i < 4; i++) model.Forward(tensor(new long[] { 5 }).unsqueeze(0), warm).Dispose();
        }
        else
            for (int k = 0; k < warmupPrompts.Length; k++)
            {
                using var warm = model.NewCache(capacity);
                var ids = WarmupPlan.Prompt(warmupPrompts[k], engine.Config.VocabSize, seed: k).Select(i => (long)i).ToArray();
                using var logits = model.Forward(tensor(ids).unsqueeze(0), warm);
                long token = logits.argmax(-1).item<long>();
                for (int i = 0; k == 0 && i < WarmupPlan.DecodeSteps; i++)
                {
                    using var l = model.Forward(tensor(new[] { token }).unsqueeze(0), warm);
                    token = l.argmax(-1).item<long>();
                }
            }
        double warmupS = warmClock.Elapsed.TotalSeconds;
        var ttft = new Dictionary<string, double>();
        var ttftExecutor = new Dictionary<string, Dictionary<string, double>>();
        var afterPrefill = new Dictionary<string, double>();
        // Each length twice, back to back: the first of its size (ttft_s: the router's batch factors come from other
        // sizes, as for a server's first such request) and right after one of the same size (ttft_warm_s: as in steady
        // serving, where requests of that size have taught the router the lanes' speeds at that batch).
        var ttftWarm = new Dictionary<string, double>();
        foreach (int p in prompts)
            for (int pass = 0; pass < 2; pass++)
            {
                engine.Scheduler?.ResetCounters();
                using var cache = model.NewCache(capacity);
                var clock = Stopwatch.StartNew();
                using var logits = model.Forward(tensor(Prompt(p)).unsqueeze(0), cache);
                _ = logits.argmax(-1).item<long>();
                (pass == 0 ? ttft : ttftWarm)[p.ToString()] = clock.Elapsed.TotalSeconds;
                if (pass > 0) continue;
                if (engine.Scheduler is { } sp) ttftExecutor[p.ToString()] = ExecutorBreakdown(sp, 1);
                if (Fiddler.Kernels.Cuda.CudaRuntime.DeviceBytesInUse(model.Device) is long used) afterPrefill[p.ToString()] = Math.Round(MemoryBudget.ToGiB(used), 2);
            }

        int steps = generate - 1;
        using var decodeCache = model.NewCache(capacity);
        var first = model.Forward(tensor(Prompt(prompts[0])).unsqueeze(0), decodeCache);
        long next = first.argmax(-1).item<long>();
        first.Dispose();
        engine.Scheduler?.ResetCounters(); // the decode windows only (its prompt's prefill layers are not decode layers)
        // A window decodes as the generator does (pipelined unless asked not to; see DecodePipeline): each step's token is
        // the host's argmax of its logits, the next step's input the device's.
        bool pipelined = decodePipeline;
        double Window()
        {
            var decode = Stopwatch.StartNew();
            if (pipelined)
            {
                using var pipeline = new Fiddler.Kernels.Generation.DecodePipeline(model, decodeCache, next);
                bool Take(float[] logits) { next = ArgMax(logits); return true; }
                for (int i = 0; i < steps; i++) pipeline.Advance(Take);
                pipeline.Finish(Take);
            }
            else
                for (int i = 0; i < steps; i++)
                {
                    using var l = model.Forward(tensor(new[] { next }).unsqueeze(0), decodeCache);
                    next = l.argmax(-1).item<long>();
                }
            return steps / decode.Elapsed.TotalSeconds;
        }
        long windowStart = decodeCache.Length, windowToken = next; // where the first window began (the A/B windows do too)
        var runs = new double[decodeRepeats];
        Fiddler.Kernels.Experts.CpuExpertKernel.ResetStats();
        engine.CpuPool?.ResetStats();
        var gc = (Gen0: GC.CollectionCount(0), Gen1: GC.CollectionCount(1), Gen2: GC.CollectionCount(2), Pause: GC.GetTotalPauseDuration(), Allocated: GC.GetTotalAllocatedBytes());
        for (int w = 0; w < decodeRepeats; w++) runs[w] = Window();
        int decodeTokens = steps * decodeRepeats;
        var gcDecode = new Dictionary<string, double>
        {
            ["gen0"] = GC.CollectionCount(0) - gc.Gen0, ["gen1"] = GC.CollectionCount(1) - gc.Gen1, ["gen2"] = GC.CollectionCount(2) - gc.Gen2,
            ["pause_ms_per_token"] = Math.Round((GC.GetTotalPauseDuration() - gc.Pause).TotalMilliseconds / decodeTokens, 3),
            ["allocated_kb_per_token"] = Math.Round((GC.GetTotalAllocatedBytes() - gc.Allocated) / 1024.0 / decodeTokens, 1),
        };
        // The last collection in the windows (0 when none ran): what a pause there was made of.
        GCMemoryInfo? last = GC.CollectionCount(0) > gc.Gen0 ? GC.GetGCMemoryInfo(GCKind.Any) : null;
        if (last is { } lastGc)
        {
            gcDecode["last_generation"] = lastGc.Generation;
            gcDecode["last_pause_ms"] = Math.Round(lastGc.PauseDurations[0].TotalMilliseconds + lastGc.PauseDurations[1].TotalMilliseconds, 3);
            gcDecode["last_gen0_before_mb"] = Math.Round(lastGc.GenerationInfo[0].SizeBeforeBytes / 1e6, 1);
            gcDecode["last_promoted_mb"] = Math.Round(lastGc.PromotedBytes / 1e6, 3);
            gcDecode["last_finalization_pending"] = lastGc.FinalizationPendingCount;
            gcDecode["last_pinned_objects"] = lastGc.PinnedObjectsCount;
            gcDecode["last_heap_mb"] = Math.Round(lastGc.HeapSizeBytes / 1e6, 1);
        }
        else
            foreach (var k in new[] { "last_generation", "last_pause_ms", "last_gen0_before_mb", "last_promoted_mb", "last_finalization_pending", "last_pinned_objects", "last_heap_mb" })
                gcDecode[k] = 0;
        var (regions, regionMs, regionBytes) = Fiddler.Kernels.Experts.CpuExpertKernel.Stats;
        var (hugeRegions, hugeMs, hugeBytes) = Fiddler.Kernels.Experts.CpuExpertKernel.HugePageStats;
        var poolStats = engine.CpuPool?.Stats;
        var s = engine.Scheduler;
        var executor = s is null ? null : ExecutorBreakdown(s, steps * decodeRepeats);
        double cpuLaneMs = s is null ? 0 : s.Router.CpuLaneStats.MeanObservedMs * s.Router.CpuLaneStats.Count;
        long expertBytes = 3L * engine.Config.HiddenSize * engine.Config.IntermediateSize * (model.DType == ScalarType.Float32 ? 4 : 2);
        double cpuGbS = cpuLaneMs > 0 ? s!.CpuExpertEquivalents * expertBytes / (cpuLaneMs / 1000) / 1e9 : 0;
        double chosenBytesPerToken = (double)engine.Config.NumHiddenLayers * engine.Config.NumExpertsPerTok * expertBytes; // every chosen expert's

        // A few steps with per-stage timing (synchronising, so kept out of the tok/s above).
        StageTimer.Enable(model.Device);
        for (int i = 0; i < StagedSteps; i++)
        {
            using var l = model.Forward(tensor(new[] { next }).unsqueeze(0), decodeCache);
            next = l.argmax(-1).item<long>();
        }
        StageTimer.Disable();
        var stages = StageTimer.Snapshot().ToDictionary(t => t.Stage, t => Math.Round(t.Ms / StagedSteps, 3));
        // The host's own ceiling, after the windows (its copies and reads would disturb them): a token's non-resident
        // expert bytes over the CPU-read + copy rate the host sustains with both running.
        Fiddler.Kernels.Offload.LaneCeiling.Result? ceiling = null;
        try { ceiling = engine.MeasureLaneCeiling(); }
        catch (Exception e) when (e is Fiddler.Kernels.Cuda.CudaException or InvalidOperationException or ArgumentException)
        {
            Console.Error.WriteLine($"lane ceiling not measured: {e.Message}"); // the run's own numbers are still reported
        }
        // Every host expert read alone, twice: does the host serve all of them like the probe's first twelve?
        var hostReads = engine.MeasureHostExpertReads();
        double offloaded = (1 - (s?.HitRate ?? 1)) * chosenBytesPerToken;
        var result = new Result(ttft, Median(runs), s?.HitRate ?? 1, cpuGbS, (s?.TransferredBytes ?? 0) / 1e9,
            s?.CpuExperts ?? 0, s?.TransferredExperts ?? 0, stages)
        {
            SplitExperts = s?.SplitExperts ?? 0, DecodePipeline = decodePipeline, TtftWarmS = ttftWarm, GpuMemoryAfterPrefillGiB = afterPrefill.Count == 0 ? null : afterPrefill, Executor = executor, TtftExecutor = ttftExecutor, DecodeRuns = runs,
            Ceiling = ceiling, HostReads = hostReads, OffloadedBytesPerToken = offloaded, WarmupPrompts = warmupPrompts, WarmupS = warmupS, GcDecode = gcDecode,
            PoolDecode = poolStats is { Regions: > 0 } ps ? new Dictionary<string, double>
            {
                ["regions"] = ps.Regions,
                ["sleep_wakes_per_region"] = Math.Round((double)ps.SleepWakes / ps.Regions, 3),
                ["absent_workers_per_region"] = Math.Round((double)ps.AbsentWorkers / ps.Regions, 3),
                ["last_join_us"] = Math.Round(ps.MeanLastJoinUs, 1),
                ["phase_tail_us"] = Math.Round(ps.MeanPhaseTailUs, 1),
                ["long_tail_phase_share"] = ps.Phases == 0 ? 0 : Math.Round((double)ps.LongTails / ps.Phases, 4),
            } : null,
            KernelDecode = regions == 0 ? null : KernelDecodeReport(regions, regionMs, regionBytes, hugeRegions, hugeMs, hugeBytes),
        };
        if (abPairs == 0 && abThreads is null && abKernel is null && abPipeline == 0 && abReadScales == 0 && ceilingWindows == 0) return result;
        // Last, after every number above was taken: each window rewinds the cache to where the first one began, so the
        // cache needs no room beyond the run's and the placement is the same as without the comparisons.
        WindowStats AbWindow()
        {
            decodeCache.Truncate(windowStart);
            next = windowToken;
            s?.ResetCounters();
            Fiddler.Kernels.Experts.CpuExpertKernel.ResetStats();
            double tokS = Window();
            var (kRegions, kMs, kBytes) = Fiddler.Kernels.Experts.CpuExpertKernel.Stats;
            return new WindowStats(tokS, s?.Router.LaneOrder.CpuLastShare ?? 0, s?.MeanHandoff.Mean.HostMs ?? 0, kRegions == 0 || kMs <= 0 ? 0 : kBytes / (kMs / 1000) / 1e9);
        }
        // Before the A/Bs, on the engine as configured: each window, then the ceiling right after it.
        if (ceilingWindows > 0)
            result = result with
            {
                CeilingRounds = MeasureCeilingWindows(ceilingWindows, AbWindow, () => s?.HitRate ?? 1,
                    chosenBytesPerToken, engine.MeasureLaneCeiling, Console.Error.WriteLine),
            };
        if (abPipeline > 0)
        {
            var (on, off, diff) = Alternate(abPipeline, on => pipelined = on, AbWindow);
            pipelined = decodePipeline;
            result = result with { AbPipeline = new PipelineComparison(on, off, diff, Median(diff)) };
        }
        if (abPairs == 0 && abThreads is null && abKernel is null && abReadScales == 0) return result;
        if (s is null)
        {
            Console.Error.WriteLine("--ab-balance, --ab-cpu-threads, --ab-kernel, --ab-read-scales: every expert is resident, so there is no CPU lane to compare");
            return result;
        }
        if (abReadScales > 0)
        {
            var abs = CompareReadScales(s, engine.ReadScales, abReadScales, AbWindow, Console.Error.WriteLine);
            if (abs is not null) result = result with { AbReadScales = abs };
        }
        if (abPairs > 0) result = result with { AbBalance = CompareBalance(s.Router, abPairs, AbWindow) };
        if (abThreads is { } t && engine.CpuPool is { } pool)
            result = result with { AbCpuThreads = CompareCpuThreads(s.Router, pool, t.Fewer, t.Pairs, AbWindow) };
        if (abKernel is { } kernelAb) result = result with { AbKernel = CompareKernelTuning(s.Router, kernelAb.Other, kernelAb.Pairs, AbWindow) };
        return result;
    }
}

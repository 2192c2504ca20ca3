using System.Diagnostics;
using System.Text.Json;
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
    }

    private const int StagedSteps = 4;

    /// <summary>The positions the run needs: the longest prompt's prefill, and the decode windows after the first prompt
    /// (plus the staged steps). The engine sizes its KV-cache reserve from this.</summary>
    public static int ContextTokens(int[] prompts, int generate, int decodeRepeats) =>
        Math.Max(prompts.Max() + 1, prompts[0] + (generate - 1) * decodeRepeats + 1 + StagedSteps);

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
    /// <param name="warmup">Run the engine's start-up warm-up first (<see cref="WarmupPlan"/>: one prompt per batch size
    /// the router learns apart, then decode steps), as <c>fiddler serve</c> does before it takes requests; TTFT is then
    /// what a server's first request of each size sees. False: only a 16-token prompt and 4 decode steps (kernels,
    /// allocator, staging slots), so each size's first prompt plans with factors learned at other sizes.</param>
    public static Result Run(OffloadEngine engine, int[] prompts, int generate, int decodeRepeats = 1, int abPairs = 0,
        (int Fewer, int Pairs)? abThreads = null, bool warmup = true, (Fiddler.Kernels.Experts.CpuKernelSettings Other, int Pairs)? abKernel = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(decodeRepeats, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(abPairs);
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
        double Window()
        {
            var decode = Stopwatch.StartNew();
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
        var (regions, regionMs, regionBytes) = Fiddler.Kernels.Experts.CpuExpertKernel.Stats;
        var poolStats = engine.CpuPool?.Stats;
        var s = engine.Scheduler;
        var executor = s is null ? null : ExecutorBreakdown(s, steps * decodeRepeats);
        double cpuLaneMs = s is null ? 0 : s.Router.CpuLaneStats.MeanObservedMs * s.Router.CpuLaneStats.Count;
        long expertBytes = 3L * engine.Config.HiddenSize * engine.Config.IntermediateSize * (model.DType == ScalarType.Float32 ? 4 : 2);
        double cpuGbS = cpuLaneMs > 0 ? s!.CpuExpertEquivalents * expertBytes / (cpuLaneMs / 1000) / 1e9 : 0;

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
        double offloaded = (1 - (s?.HitRate ?? 1)) * engine.Config.NumHiddenLayers * engine.Config.NumExpertsPerTok * expertBytes;
        var result = new Result(ttft, Median(runs), s?.HitRate ?? 1, cpuGbS, (s?.TransferredBytes ?? 0) / 1e9,
            s?.CpuExperts ?? 0, s?.TransferredExperts ?? 0, stages)
        {
            SplitExperts = s?.SplitExperts ?? 0, TtftWarmS = ttftWarm, GpuMemoryAfterPrefillGiB = afterPrefill.Count == 0 ? null : afterPrefill, Executor = executor, TtftExecutor = ttftExecutor, DecodeRuns = runs,
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
            KernelDecode = regions == 0 ? null : new Dictionary<string, double>
            {
                ["regions"] = regions, ["ms_per_region"] = Math.Round(regionMs / regions, 3),
                ["gb_s"] = Math.Round(regionBytes / (regionMs / 1000) / 1e9, 1),
            },
        };
        if (abPairs == 0 && abThreads is null && abKernel is null) return result;
        if (s is null)
        {
            Console.Error.WriteLine("--ab-balance, --ab-cpu-threads, --ab-kernel: every expert is resident, so there is no CPU lane to compare");
            return result;
        }
        // Last, after every number above was taken: each window rewinds the cache to where the first one began, so the
        // cache needs no room beyond the run's and the placement is the same as without the comparisons.
        WindowStats AbWindow()
        {
            decodeCache.Truncate(windowStart);
            next = windowToken;
            s.ResetCounters();
            Fiddler.Kernels.Experts.CpuExpertKernel.ResetStats();
            double tokS = Window();
            var (kRegions, kMs, kBytes) = Fiddler.Kernels.Experts.CpuExpertKernel.Stats;
            return new WindowStats(tokS, s.Router.LaneOrder.CpuLastShare, s.MeanHandoff.Mean.HostMs, kRegions == 0 ? 0 : kBytes / (kMs / 1000) / 1e9);
        }
        if (abPairs > 0) result = result with { AbBalance = CompareBalance(s.Router, abPairs, AbWindow) };
        if (abThreads is { } t && engine.CpuPool is { } pool)
            result = result with { AbCpuThreads = CompareCpuThreads(s.Router, pool, t.Fewer, t.Pairs, AbWindow) };
        if (abKernel is { } kernelAb) result = result with { AbKernel = CompareKernelTuning(s.Router, kernelAb.Other, kernelAb.Pairs, AbWindow) };
        return result;
    }

    /// <summary>The decode window's executor timeline per layer (host clock, no syncs) and layers per token.</summary>
    private static Dictionary<string, double> ExecutorBreakdown(Fiddler.Actors.Engine.RouterScheduler s, int tokens)
    {
        var t = s.MeanTimings;
        var (layerMs, cpuLaneMs, layers) = s.MeanLayer;
        return new()
        {
            ["layers_per_token"] = Math.Round((double)layers / tokens, 2),
            ["total"] = Math.Round(layerMs, 3),
            ["decide"] = Math.Round(t.DecideMs, 3),
            ["until_cpu_lane_starts"] = Math.Round(t.CpuStartMs, 3),
            ["queue_device_lane"] = Math.Round(t.DeviceQueueMs, 3),
            ["wait_for_cpu_lane"] = Math.Round(t.CpuWaitMs, 3),
            ["merge"] = Math.Round(t.MergeMs, 3),
            ["cpu_lane"] = Math.Round(cpuLaneMs, 3),
            // Gated layers on CUDA: the device's expert work, and how long the device then waited for the CPU lane.
            ["device_lane"] = Math.Round(s.MeanDevice.Mean.DeviceLaneMs, 3),
            ["device_waited_for_cpu"] = Math.Round(s.MeanDevice.Mean.WaitedForCpuMs, 3),
            ["device_timed_layers"] = s.MeanDevice.Layers,
            // From a gated layer's CPU lane ending to the next layer's executor: the device's part (merge, attention,
            // norm, router; then the read-back's copies), the host's view of it (plus the gate's latency and the host
            // noticing the read-back), then to the executor.
            ["handoff_device"] = Math.Round(s.MeanHandoff.Mean.DeviceMs, 3),
            ["handoff_readback_copy"] = Math.Round(s.MeanHandoff.Mean.ReadbackMs, 3),
            ["handoff_host"] = Math.Round(s.MeanHandoff.Mean.HostMs, 3),
            ["handoff_to_executor"] = Math.Round(s.MeanHandoff.Mean.ToExecutorMs, 3),
            ["handoff_layers"] = s.MeanHandoff.Layers,
            // handoff_host split by the lane that ended last (the device: it waited < 0.02 ms for the CPU lane); where
            // the device did, the host's hand-off also holds the device lane's tail past the CPU lane's end.
            ["handoff_host_device_last"] = Math.Round(s.HandoffByLastLane.DeviceLast.HostMs, 3),
            ["handoff_host_cpu_last"] = Math.Round(s.HandoffByLastLane.CpuLast.HostMs, 3),
            ["device_last_layers"] = s.HandoffByLastLane.DeviceLast.Layers,
            ["cpu_last_layers"] = s.HandoffByLastLane.CpuLast.Layers,
            // The router's view of the same (decode layers with both lanes, whose order was measured): the share the CPU
            // lane ended, and the balance on the planned CPU lane (1 with --no-balance-last-lane), when the window ended.
            ["lane_order_layers"] = s.Router.LaneOrder.Layers,
            ["cpu_ended_last_share"] = Math.Round(s.Router.LaneOrder.CpuLastShare, 3),
            ["lane_balance"] = Math.Round(s.Router.LaneBalance, 3),
        };
    }

    private static double ExpertRouterTarget(Fiddler.Actors.Scheduling.ExpertRouter r) =>
        Fiddler.Actors.Scheduling.ExpertRouter.LastLaneTarget(r.Profile.CpuMs(1) * r.CpuFactors.Contended, r.Profile.TransferMs * r.TransferFactor);

    /// <summary>The lane ceiling's numbers and what they mean for this run's decode.</summary>
    /// <summary>
    /// The host experts' read rates: spread (best of two passes per expert), how alike the two passes are, the probe's
    /// first twelve against the rest, and the median per layer (experts are allocated layer by layer, so a slower part of
    /// the host's memory would show as a run of layers).
    /// </summary>
    private static Dictionary<string, object?> HostReadsReport(Fiddler.Kernels.Offload.HostExpertReads.Result hr, int layers)
    {
        static double? R(double v) => double.IsNaN(v) ? null : Math.Round(v, 1); // JSON has no NaN
        int perLayer = (int)Math.Ceiling(hr.Experts / (double)layers);
        return new()
        {
            ["experts"] = hr.Experts,
            ["passes"] = hr.PassGBps.Length,
            ["min"] = R(hr.Quantile(0)), ["p10"] = R(hr.Quantile(0.1)), ["median"] = R(hr.Quantile(0.5)), ["p90"] = R(hr.Quantile(0.9)), ["max"] = R(hr.Quantile(1)),
            ["pass_correlation"] = double.IsNaN(hr.PassCorrelation) ? null : Math.Round(hr.PassCorrelation, 3),
            ["first_12_median"] = R(hr.MedianOf(0, 12)),
            ["rest_median"] = R(hr.MedianOf(12, hr.Experts)),
            // Host experts are listed layer by layer; a layer holds those its placement left on the host (not a fixed count).
            ["median_by_experts_in_order"] = Enumerable.Range(0, (hr.Experts + perLayer - 1) / perLayer)
                .Select(i => R(hr.MedianOf(i * perLayer, (i + 1) * perLayer))).ToArray(),
        };
    }

    private static Dictionary<string, object?> LaneCeilingReport(Fiddler.Kernels.Offload.LaneCeiling.Result c, Result r)
    {
        double? ceiling = r.OffloadedBytesPerToken > 0 ? c.DecodeTokS(r.OffloadedBytesPerToken) : null;
        return new()
        {
            ["cpu_read_gb_s"] = Math.Round(c.CpuReadGBps, 1),
            ["h2d_gb_s"] = Math.Round(c.CopyGBps, 1),
            ["cpu_read_with_h2d_gb_s"] = Math.Round(c.CpuReadWithCopyGBps, 1),
            ["h2d_with_cpu_read_gb_s"] = Math.Round(c.CopyWithCpuReadGBps, 1),
            ["concurrent_gb_s"] = Math.Round(c.ConcurrentGBps, 1),
            ["window_ms"] = Math.Round(c.WindowMs, 1),
            ["offloaded_gb_per_token"] = Math.Round(r.OffloadedBytesPerToken / 1e9, 3),
            // Decode if a token's offloaded bytes moved at the concurrent rate and nothing else took time.
            ["decode_tok_s"] = ceiling is double t ? Math.Round(t, 2) : null,
            ["decode_fraction"] = ceiling is double u ? Math.Round(r.DecodeTokS / u, 3) : null,
            // The rate this run's lanes moved those bytes at, over the whole token (attention, hand-offs included).
            ["achieved_gb_s"] = Math.Round(r.OffloadedBytesPerToken * r.DecodeTokS / 1e9, 1),
        };
    }

    private static double? DeviceMemoryUsedGiB(Device device) =>
        Fiddler.Kernels.Cuda.CudaRuntime.DeviceBytesInUse(device) is long used ? Math.Round(MemoryBudget.ToGiB(used), 2) : null;

    public static Dictionary<string, object?> Report(OffloadEngine engine, EngineOptions o, Result r, string? baselinePath, string card)
    {
        double? baseline = null;
        if (baselinePath is not null && File.Exists(baselinePath))
            baseline = JsonDocument.Parse(File.ReadAllText(baselinePath)).RootElement.GetProperty("decode_tok_s").GetDouble();
        return new()
        {
            ["model"] = o.NamedConfig ?? Path.GetFileName(o.ModelDir!.TrimEnd('/')),
            ["layers"] = engine.Config.NumHiddenLayers,
            ["gpu_budget_gib"] = o.GpuBudgetBytes is long b ? Math.Round(MemoryBudget.ToGiB(b), 2) : null,
            ["experts_on_gpu"] = engine.Plan?.ExpertsOnGpu,
            ["staging_slots"] = o.StagingSlots,
            ["prefetch_rows"] = o.PrefetchRows,
            ["dedicated_lane_thread"] = o.DedicatedLaneThread,
            ["context_tokens"] = o.ContextTokens, // the positions the placement reserves KV cache and activations for
            ["reserve_gib"] = engine.Plan is { } plan ? Math.Round(MemoryBudget.ToGiB(plan.ReserveBytes), 3) : null,
            // What the device has given out by the end (this process's CUDA context and torch's cached blocks, which
            // keep the peak): the budget's honesty check. Null off CUDA.
            ["gpu_memory_used_gib"] = DeviceMemoryUsedGiB(o.Device),
            ["gpu_memory_after_prefill_gib"] = r.GpuMemoryAfterPrefillGiB,
            ["gpu_memory_at_start_gib"] = engine.DeviceBytesAtStart is long start ? Math.Round(MemoryBudget.ToGiB(start), 2) : null,
            ["decode_tok_s"] = Math.Round(r.DecodeTokS, 3),
            ["decode_tok_s_runs"] = r.DecodeRuns.Select(x => Math.Round(x, 3)).ToArray(),
            ["ttft_s"] = r.TtftS.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)),
            ["ttft_warm_s"] = r.TtftWarmS.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)),
            ["gpu_hit_rate"] = Math.Round(r.HitRate, 3),
            ["cpu_expert_runs"] = r.CpuExperts,
            ["expert_transfers"] = r.Transfers,
            ["split_experts"] = r.SplitExperts,
            ["cpu_gb_s"] = Math.Round(r.CpuGbS, 1),
            ["pcie_gb"] = Math.Round(r.PcieGb, 2),
            ["stage_ms_per_token"] = r.StageMs,
            ["executor_ms_per_layer"] = r.Executor,
            ["ttft_executor_ms_per_layer"] = r.TtftExecutor,
            ["cpu_backend"] = engine.CpuBackend,
            ["routing"] = o.Routing == Fiddler.Actors.Scheduling.RoutingMode.Auto && !o.SplitExperts ? "AutoWhole" : o.Routing.ToString(),
            ["cpu_contention"] = o.CpuContention,
            ["adapt_cpu_model"] = o.AdaptCpuModel,
            ["batch_adapt_rate"] = o.BatchAdaptRate,
            ["merge"] = o.Merge.ToString(),
            ["merge_gate"] = engine.Executor is { Merge: Fiddler.Kernels.Offload.CpuMerge.Gated } ex ? ex.GateDescription : null,
            ["readback_spin_us"] = Fiddler.Kernels.Runtime.HostReadback.SpinMicroseconds,
            ["host_huge_pages_gib"] = Fiddler.Kernels.Runtime.HugePages.ProcessHugeBytes() is long hp ? Math.Round(hp / (double)(1L << 30), 2) : null,
            ["cpu_threads"] = OffloadEngine.DefaultCpuThreads(o),
            ["cpu_factors"] = engine.Scheduler is { } sch ? new[] { Math.Round(sch.Router.CpuFactors.Calm, 3), Math.Round(sch.Router.CpuFactors.Contended, 3) } : null,
            ["transfer_factor"] = engine.Scheduler is { } sct ? Math.Round(sct.Router.TransferFactor, 3) : null,
            ["balance_last_lane"] = engine.Scheduler?.Router.BalanceLastLane ?? o.BalanceLastLane, // as the router runs it
            // The share of decode layers with both lanes whose CPU lane should end last for the least expected finish,
            // with the learned speeds (ExpertRouter.LastLaneTarget); the decode windows' share and the balance are under
            // executor_ms_per_layer (cpu_ended_last_share, lane_balance).
            ["cpu_ended_last_target"] = engine.Scheduler is { } sctg ? Math.Round(ExpertRouterTarget(sctg.Router), 3) : null,
            // Per batch size (its largest per-expert batch: max_16, max_64, over_64): CPU alone, CPU beside copies, copies,
            // and the layers that taught it (0: still borrowing another size's factors).
            ["batch_factors"] = engine.Scheduler is { } scb ? scb.Router.BatchFactors.ToDictionary(
                b => b.MaxTokens == int.MaxValue ? $"over_{Fiddler.Actors.Scheduling.ExpertRouter.BatchSizes[^2]}" : $"max_{b.MaxTokens}",
                b => new double[] { Math.Round(b.Calm, 3), Math.Round(b.Contended, 3), Math.Round(b.Transfer, 3), b.Layers }) : null,
            ["gc_decode"] = r.GcDecode,
            ["kernel_decode"] = r.KernelDecode,
            ["pool_decode"] = r.PoolDecode,
            ["host_expert_read_gb_s"] = r.HostReads is { Experts: > 0 } hr ? HostReadsReport(hr, engine.Config.NumHiddenLayers) : null,
            ["warmup_prompt_tokens"] = r.WarmupPrompts,
            ["warmup_s"] = Math.Round(r.WarmupS, 3),
            ["card"] = card,
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["decode_tok_s_generator"] = r.GeneratorTokS is double g ? Math.Round(g, 3) : null,
            ["ab_balance"] = r.AbBalance is { } abb ? new Dictionary<string, object>
            {
                ["pairs"] = abb.On.Length,
                ["lane_balance_at_start"] = Math.Round(abb.BalanceAtStart, 3),
                ["on_tok_s"] = abb.On.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["off_tok_s"] = abb.Off.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["pair_diff_pct"] = abb.PairDiffPct,
                ["median_diff_pct"] = Math.Round(abb.MedianDiffPct, 2),
                ["on_cpu_ended_last"] = abb.On.Select(x => Math.Round(x.CpuEndedLastShare, 3)).ToArray(),
                ["off_cpu_ended_last"] = abb.Off.Select(x => Math.Round(x.CpuEndedLastShare, 3)).ToArray(),
                ["on_handoff_host_ms"] = abb.On.Select(x => Math.Round(x.HandoffHostMs, 3)).ToArray(),
                ["off_handoff_host_ms"] = abb.Off.Select(x => Math.Round(x.HandoffHostMs, 3)).ToArray(),
            } : null,
            ["ab_cpu_threads"] = r.AbCpuThreads is { } abt ? new Dictionary<string, object>
            {
                ["pairs"] = abt.FullRuns.Length,
                ["threads"] = new[] { abt.Full, abt.Fewer },
                ["full_tok_s"] = abt.FullRuns.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["fewer_tok_s"] = abt.FewerRuns.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["pair_diff_pct"] = abt.PairDiffPct, // fewer / full − 1
                ["median_diff_pct"] = Math.Round(abt.MedianDiffPct, 2),
                ["cpu_factor"] = new[] { Math.Round(abt.FullCpuFactor, 3), Math.Round(abt.FewerCpuFactor, 3) },
                ["full_handoff_host_ms"] = abt.FullRuns.Select(x => Math.Round(x.HandoffHostMs, 3)).ToArray(),
                ["fewer_handoff_host_ms"] = abt.FewerRuns.Select(x => Math.Round(x.HandoffHostMs, 3)).ToArray(),
            } : null,
            ["ab_kernel"] = r.AbKernel is { } abk ? new Dictionary<string, object>
            {
                ["pairs"] = abk.ConfiguredRuns.Length,
                ["settings"] = new[] { abk.Configured.ToString(), abk.Other.ToString() }, // prefetch bytes,level,next rows,item KB
                ["configured_tok_s"] = abk.ConfiguredRuns.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["other_tok_s"] = abk.OtherRuns.Select(x => Math.Round(x.TokS, 3)).ToArray(),
                ["pair_diff_pct"] = abk.PairDiffPct, // other / configured − 1
                ["median_diff_pct"] = Math.Round(abk.MedianDiffPct, 2),
                ["cpu_factor"] = new[] { Math.Round(abk.ConfiguredCpuFactor, 3), Math.Round(abk.OtherCpuFactor, 3) },
                ["configured_kernel_gb_s"] = abk.ConfiguredRuns.Select(x => Math.Round(x.KernelGBps, 1)).ToArray(),
                ["other_kernel_gb_s"] = abk.OtherRuns.Select(x => Math.Round(x.KernelGBps, 1)).ToArray(),
            } : null,
            ["decode_tok_s_actors"] = r.ActorsTokS is double a ? Math.Round(a, 3) : null,
            ["actor_overhead_pct"] = r.ActorOverheadPct is double pct ? Math.Round(pct, 2) : null,
            // Rounds alternate the order (direct first in even rounds, actors first in odd ones).
            ["decode_tok_s_generator_runs"] = r.GeneratorRuns?.Select(x => Math.Round(x, 3)).ToArray(),
            ["decode_tok_s_actors_runs"] = r.ActorRuns?.Select(x => Math.Round(x, 3)).ToArray(),
            // GPU memory in use before the first round and after each (one direct and one actor decode per round).
            ["gpu_memory_actor_rounds_gib"] = r.ActorRoundsMemoryGiB,
            ["actor_cpu_threads"] = r.ActorCpuParticipants, // the CPU pool's participants in the actor rounds (cpu_threads: the direct path's)
            ["lane_ceiling"] = r.Ceiling is { } c ? LaneCeilingReport(c, r) : null,
            ["baseline_seed_decode_tok_s"] = baseline,
            ["speedup_vs_seed"] = baseline is double bs && bs > 0 ? Math.Round(r.DecodeTokS / bs, 2) : null,
        };
    }
}

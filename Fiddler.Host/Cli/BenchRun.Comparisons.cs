using Fiddler.Actors.Engine;

namespace Fiddler.Host.Cli;

// The bench's in-process comparisons: decode through the actor runtime vs directly (--actors), the lane-order balance
// on vs off (--ab-balance), the CPU lane's worker count (--ab-cpu-threads), the CPU kernel's tuning (--ab-kernel) and
// the decode pipeline on vs off (--ab-pipeline) and routing by the host experts' read speeds or not (--ab-read-scales).
public static partial class BenchRun
{
    /// <summary>
    /// Decode through Kernels' generator directly, then through the actor runtime (router, layer and CPU pool actors,
    /// GPU device actor), same prompt and greedy tokens: the difference is the actors' cost per step.
    /// <para>
    /// <paramref name="actorParticipants"/>: the CPU pool's participants during the actor rounds (null: the engine's own,
    /// as <c>fiddler serve</c> runs them; fewer to compare, <c>bench --actor-cpu-threads</c>). Each path keeps its own
    /// learned router speeds, and the overhead is the whole cost of serving through the actors against the direct path.
    /// </para>
    /// </summary>
    public static async Task<ActorComparison> ActorOverhead(OffloadEngine engine, int promptTokens,
        int generate, Fiddler.Kernels.Offload.CpuMerge merge = Fiddler.Kernels.Offload.CpuMerge.Gated, int rounds = 5,
        bool prefetchRows = true, bool spinKernelGate = false, int? actorParticipants = null)
    {
        // Without a CPU pool (no budget, or one that holds every expert) there is nothing to switch: both paths run alike.
        var pool = engine.CpuPool;
        int full = pool?.ActiveConcurrency ?? 0;
        if (pool is not null && actorParticipants is int n && (n < 1 || n > full))
            throw new ArgumentOutOfRangeException(nameof(actorParticipants), actorParticipants, $"must be in 1..{full} (the engine's CPU pool)");
        var router = engine.Scheduler?.Router;
        // The actor rounds are the pool's "fewer" side; the first of them starts from the direct side's speeds.
        var sides = pool is not null && router is not null && actorParticipants is int m && m != full
            ? new LearnedSides(router, fewer => pool.ActiveConcurrency = fewer ? m : full) : null;
        var rng = new Random(1);
        int[] prompt = Enumerable.Range(0, promptTokens).Select(_ => rng.Next(3, engine.Config.VocabSize)).ToArray();
        var options = new Fiddler.Kernels.Generation.GenerationOptions
            { MaxNewTokens = generate, Sampling = Fiddler.Kernels.Sampling.SamplingOptions.Greedy, StopOnEos = false };
        var warmUp = options with { MaxNewTokens = 3 };
        var generator = new Fiddler.Kernels.Generation.Generator(engine.Model, null);
        generator.Run(prompt, warmUp); // JIT and allocator warm-up of the generator path
        var offload = engine.Scheduler is null ? ((Fiddler.Kernels.Offload.IExpertScheduler, Fiddler.Kernels.Offload.ICpuExpertBackend, Fiddler.Kernels.Offload.IWeightStager?)?)null
            : (engine.Scheduler, engine.Cpu!, engine.Stager);
        // Alternate direct and actor runs, each round in the other order (direct first, then actors first): the host
        // drifts by several percent within a call, in one direction over a few runs, so a fixed order would charge the
        // drift to whichever runs second. The median of the per-round ratios is robust to one disturbed run.
        var direct = new double[rounds];
        var actors = new double[rounds];
        var directStages = new PathStages[rounds];
        var actorStages = new PathStages[rounds];
        var scheduler = engine.Scheduler;
        // GPU memory in use before the rounds and after each: whether the rounds' excess over the bench's own use grows
        // round by round (something kept per runtime or per GPU thread) or comes once (a cache of another size).
        var memory = new double?[rounds + 1];
        memory[0] = UsedGiB(engine);
        for (int round = 0; round < rounds; round++)
        {
            async Task Actors()
            {
                try
                {
                    sides?.Use(sideB: true);
                    await using var runtime = Fiddler.Actors.Runtime.FiddlerRuntime.Start(engine.Model, null, offload, merge: merge,
                        prefetchRows: prefetchRows, spinKernelGate: spinKernelGate);
                    await runtime.RunAsync(prompt, warmUp);
                    // As below: the warm-up's last observations may still be in the router's mailbox; an ask queued
                    // behind them returns once they are accounted, so the reset leaves none of them for the measured run.
                    await runtime.LayerStatsAsync();
                    scheduler?.ResetCounters();
                    actors[round] = (await runtime.RunAsync(prompt, options)).DecodeTokensPerSecond;
                    // The run's last observations were told to the router before it ended: an ask queued behind them
                    // returns once the router has accounted them all.
                    await runtime.LayerStatsAsync();
                    actorStages[round] = PathStages.Of(scheduler);
                }
                finally
                {
                    sides?.Use(sideB: false);
                    engine.Model.SetExpertExecutor(engine.Executor); // disposing the runtime cleared it
                }
            }
            void Direct()
            {
                engine.Model.SetExpertExecutor(engine.Executor);
                scheduler?.ResetCounters();
                direct[round] = generator.Run(prompt, options).DecodeTokensPerSecond;
                directStages[round] = PathStages.Of(scheduler);
            }
            if (round % 2 == 0) { Direct(); await Actors(); }
            else { await Actors(); Direct(); }
            memory[round + 1] = UsedGiB(engine);
        }
        engine.Model.SetExpertExecutor(engine.Executor);
        double overhead = Median(direct.Zip(actors, (d, a) => (d / a - 1) * 100));
        return new ActorComparison(Median(direct), Median(actors), overhead, direct, actors, memory,
            pool is null ? null : sides is not null ? actorParticipants!.Value : full)
        { DirectStages = PathStages.Median(directStages), ActorStages = PathStages.Median(actorStages) };
    }

    /// <summary>
    /// One run's host-side stages per layer, ms (means over the layers the executor timed, the run's prefill included):
    /// deciding the routes (through the actors: the router actor's round trip), starting the CPU lane, the CPU lane
    /// (through the actors: from the message to the CPU-pool actor to the lane's end), the host's hand-off from the CPU
    /// lane's end to the next routing, and the whole layer; and how many layers were timed (the same on both paths: every
    /// layer of the run, counted once). Where these differ between the paths is where the actors cost.
    /// </summary>
    public readonly record struct PathStages(double DecideMs, double LaneStartMs, double CpuLaneMs, double HandoffHostMs, double LayerMs, long Layers)
    {
        public static PathStages Of(RouterScheduler? s)
        {
            if (s is null) return default;
            var t = s.MeanTimings;
            var (layerMs, cpuLaneMs, layers) = s.MeanLayer;
            return new(t.DecideMs, t.CpuStartMs, cpuLaneMs, s.MeanHandoff.Mean.HostMs, layerMs, layers);
        }

        /// <summary>Each stage's median over the runs.</summary>
        public static PathStages Median(PathStages[] runs) => runs.Length == 0 ? default : new(
            BenchRun.Median(runs.Select(r => r.DecideMs)), BenchRun.Median(runs.Select(r => r.LaneStartMs)),
            BenchRun.Median(runs.Select(r => r.CpuLaneMs)), BenchRun.Median(runs.Select(r => r.HandoffHostMs)),
            BenchRun.Median(runs.Select(r => r.LayerMs)), (long)BenchRun.Median(runs.Select(r => (double)r.Layers)));
    }

    private static double? UsedGiB(OffloadEngine engine) =>
        Fiddler.Kernels.Cuda.CudaRuntime.DeviceBytesInUse(engine.Model.Device) is long used ? Math.Round(Fiddler.Actors.Placement.MemoryBudget.ToGiB(used), 2) : null;

    /// <summary>One decode window of an A/B: tok/s, the share of its gated decode layers the CPU lane ended last, the
    /// host's mean hand-off between layers (ms; 0 where not measured: off CUDA) and the SIMD kernel's own rate in its
    /// regions (GB/s; 0 where it ran none).</summary>
    public readonly record struct WindowStats(double TokS, double CpuEndedLastShare, double HandoffHostMs, double KernelGBps = 0);

    /// <summary>
    /// <c>--ab-balance N</c>: N pairs of decode windows in this process, the lane-order balance on in one window of each
    /// pair and off in the other (the order alternating pair by pair), each from the same position and token as the
    /// first main window, on the same placement and learned speeds: free of the spread between separate processes (not
    /// of the host's drift within one, which the alternation spreads over both sides). <paramref name="MedianDiffPct"/>:
    /// the median of the pairs' (on / off − 1) × 100.
    /// </summary>
    public sealed record BalanceComparison(WindowStats[] On, WindowStats[] Off, double[] PairDiffPct, double MedianDiffPct, double BalanceAtStart);

    /// <summary>Decode tok/s directly and through the actors (medians and every round), the median per-round overhead, the
    /// GPU memory in use (GiB; null off CUDA) before the first round and after each, and the CPU pool's participants in
    /// the actor rounds (null without a pool).</summary>
    public sealed record ActorComparison(double Direct, double Actors, double OverheadPct, double[] DirectRuns, double[] ActorRuns,
        double?[] MemoryGiB, int? ActorParticipants)
    {
        /// <summary>The median host-side stages per layer of each path's runs (see <see cref="PathStages"/>).</summary>
        public PathStages DirectStages { get; init; }
        public PathStages ActorStages { get; init; }
    }

    /// <summary>
    /// <c>--ab-cpu-threads N</c>: pairs of decode windows with the CPU expert pool on all its participants
    /// (<paramref name="Full"/>) and on <paramref name="Fewer"/>, each setting with the router's learned speeds of its own
    /// (the fewer-worker side learns them in one discarded window first). <paramref name="MedianDiffPct"/>: the median of
    /// the pairs' (fewer / full − 1) × 100. <paramref name="FullCpuFactor"/>, <paramref name="FewerCpuFactor"/>: each
    /// side's learned CPU factor beside transfers (decode-sized layers) at the end.
    /// </summary>
    public sealed record ThreadsComparison(int Full, int Fewer, WindowStats[] FullRuns, WindowStats[] FewerRuns, double[] PairDiffPct,
        double MedianDiffPct, double FullCpuFactor, double FewerCpuFactor);

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s, side A first in even pairs and side B first in odd ones
    /// (a drift charges both sides alike); <paramref name="use"/>(true) sets side A up, (false) side B. Returns both sides'
    /// windows and each pair's (A / B − 1) × 100.
    /// </summary>
    public static (WindowStats[] A, WindowStats[] B, double[] DiffPct) Alternate(int pairs, Action<bool> use, Func<WindowStats> window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        var a = new WindowStats[pairs];
        var b = new WindowStats[pairs];
        for (int p = 0; p < pairs; p++)
            foreach (bool sideA in p % 2 == 0 ? new[] { true, false } : [false, true])
            {
                use(sideA);
                (sideA ? a : b)[p] = window();
            }
        return (a, b, a.Zip(b, (x, y) => Math.Round((x.TokS / y.TokS - 1) * 100, 2)).ToArray());
    }

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s with <paramref name="router"/>'s lane-order balance on
    /// and off, on first in even pairs and off first in odd ones; the router's setting is restored afterwards.
    /// </summary>
    public static BalanceComparison CompareBalance(Fiddler.Actors.Scheduling.ExpertRouter router, int pairs, Func<WindowStats> window)
    {
        bool configured = router.BalanceLastLane;
        double atStart = router.LaneBalance;
        try
        {
            var (on, off, diff) = Alternate(pairs, balance => router.BalanceLastLane = balance, window);
            return new BalanceComparison(on, off, diff, Median(diff), atStart);
        }
        finally { router.BalanceLastLane = configured; }
    }

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s with <paramref name="pool"/> on all its participants
    /// and on <paramref name="fewer"/> (fewer first in even pairs), each side with its own learned router speeds; the
    /// pool's participants and the full side's speeds are restored afterwards.
    /// </summary>
    public static ThreadsComparison CompareCpuThreads(Fiddler.Actors.Scheduling.ExpertRouter router, Fiddler.Kernels.Experts.CpuWorkerPool pool,
        int fewer, int pairs, Func<WindowStats> window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        int full = pool.ActiveConcurrency;
        if (fewer < 1 || fewer >= full) throw new ArgumentOutOfRangeException(nameof(fewer), fewer, $"must be in 1..{full - 1} (the pool runs on {full})");
        var sides = new LearnedSides(router, useFewer => pool.ActiveConcurrency = useFewer ? fewer : full);
        try
        {
            sides.Use(sideB: true);
            window(); // discarded: the fewer side learns its speeds
            var (few, all, diff) = Alternate(pairs, sides.Use, window);
            sides.Use(sideB: false); // sets the fewer side's speeds aside (when it ran last) and puts the full side's back
            return new ThreadsComparison(full, fewer, all, few, diff, Median(diff), router.SaveLearned().Contended[0], sides.SpeedsB!.Contended[0]);
        }
        finally { sides.Abandon(); }
    }

    /// <summary>
    /// <c>--ab-pipeline P</c>: pairs of decode windows through <see cref="Fiddler.Kernels.Generation.DecodePipeline"/> and
    /// step by step (the host reads each token before it queues the next step), pipelined first in even pairs. Same router,
    /// same tokens. <paramref name="MedianGainPct"/>: the median of the pairs' (pipelined / step by step − 1) × 100.
    /// </summary>
    public sealed record PipelineComparison(WindowStats[] PipelinedRuns, WindowStats[] SteppedRuns, double[] PairGainPct, double MedianGainPct);

    /// <summary>
    /// <c>--ab-read-scales P</c>: pairs of decode windows routing with the host experts' read-speed scales
    /// (<see cref="Fiddler.Actors.Scheduling.HostReadScales"/>) and without, each with its own learned router speeds (the
    /// side without learns them in one discarded window first). <paramref name="MedianGainPct"/>: the median of the pairs'
    /// (with / without − 1) × 100.
    /// </summary>
    public sealed record ReadScalesComparison(WindowStats[] WithRuns, WindowStats[] WithoutRuns, double[] PairGainPct, double MedianGainPct,
        double WithCpuFactor, double WithoutCpuFactor)
    {
        /// <summary>The engine itself does not plan by the scales on this host (its memory reads evenly by
        /// <see cref="Fiddler.Actors.Scheduling.HostReadScales.Uneven"/>); the side with them used them for the comparison only.</summary>
        public bool Forced { get; init; }
    }

    /// <summary>
    /// <c>--ab-read-scales</c> on the engine's scheduler: where it plans by read scales, <see cref="CompareReadScales(RouterScheduler, int, Func{WindowStats})"/>.
    /// Where it does not (the host reads evenly by <see cref="Fiddler.Actors.Scheduling.HostReadScales.Uneven"/>) but
    /// <paramref name="measured"/> scales exist, the side with them plans by those for the comparison (how the gate's
    /// threshold is checked, <see cref="ReadScalesComparison.Forced"/>); afterwards the engine plans without them again,
    /// with the speeds it had learned without them. Null (said through <paramref name="log"/>) when none were measured.
    /// </summary>
    public static ReadScalesComparison? CompareReadScales(RouterScheduler scheduler, Fiddler.Actors.Scheduling.HostReadScales? measured, int pairs,
        Func<WindowStats> window, Action<string> log)
    {
        var enginePlans = scheduler.ReadScales;
        if (enginePlans is null && measured is null)
        {
            log("--ab-read-scales: no read scales were measured (experts too small to time, or the measurement failed: see the log above), so there is nothing to compare");
            return null;
        }
        if (enginePlans is not null) return CompareReadScales(scheduler, pairs, window);
        log($"--ab-read-scales: the engine does not plan by read scales on this host ({measured}); the side with them plans by them for the comparison");
        var learned = scheduler.Router.SaveLearned();
        scheduler.ReadScales = measured;
        try { return CompareReadScales(scheduler, pairs, window) with { Forced = true }; }
        finally
        {
            scheduler.ReadScales = null;
            scheduler.Router.RestoreLearned(learned);
        }
    }

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s with <paramref name="scheduler"/>'s read-speed scales on
    /// and off (on first in even pairs), each side with its own learned speeds; the scales are back on afterwards.
    /// </summary>
    public static ReadScalesComparison CompareReadScales(RouterScheduler scheduler, int pairs, Func<WindowStats> window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        var sides = new LearnedSides(scheduler.Router, without => scheduler.UseReadScales = !without);
        try
        {
            sides.Use(sideB: true);
            window(); // discarded: the side without scales learns its speeds
            var (with, without, gain) = Alternate(pairs, useWith => sides.Use(sideB: !useWith), window);
            sides.Use(sideB: false);
            return new ReadScalesComparison(with, without, gain, Median(gain), scheduler.Router.SaveLearned().Contended[0], sides.SpeedsB!.Contended[0]);
        }
        finally { sides.Abandon(); }
    }

    /// <summary>
    /// <c>--ab-kernel SETTINGS</c>: pairs of decode windows with the CPU expert kernel's tuning as configured
    /// (<paramref name="Configured"/>: defaults or <c>FIDDLER_KERNEL_*</c>) and as <paramref name="Other"/>, each with the
    /// router's learned speeds of its own (the other side learns them in one discarded window first).
    /// <paramref name="MedianDiffPct"/>: the median of the pairs' (other / configured − 1) × 100.
    /// </summary>
    public sealed record KernelComparison(Fiddler.Kernels.Experts.CpuKernelSettings Configured, Fiddler.Kernels.Experts.CpuKernelSettings Other,
        WindowStats[] ConfiguredRuns, WindowStats[] OtherRuns, double[] PairDiffPct, double MedianDiffPct, double ConfiguredCpuFactor, double OtherCpuFactor);

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s with the kernel as configured and as
    /// <paramref name="other"/> (other first in even pairs), each side with its own learned router speeds; the
    /// configured tuning and its speeds are restored afterwards.
    /// </summary>
    public static KernelComparison CompareKernelTuning(Fiddler.Actors.Scheduling.ExpertRouter router, Fiddler.Kernels.Experts.CpuKernelSettings other,
        int pairs, Func<WindowStats> window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        var configured = Fiddler.Kernels.Experts.CpuKernelSettings.Current;
        try { other.Apply(); } // checks every knob (all or none set) before any window runs
        finally { configured.Apply(); }
        var sides = new LearnedSides(router, useOther => (useOther ? other : configured).Apply());
        try
        {
            sides.Use(sideB: true);
            window(); // discarded: the other side learns its speeds
            var (b, a, diff) = Alternate(pairs, sides.Use, window);
            sides.Use(sideB: false);
            return new KernelComparison(configured, other, a, b, diff, Median(diff), router.SaveLearned().Contended[0], sides.SpeedsB!.Contended[0]);
        }
        finally { sides.Abandon(); }
    }

    /// <summary>
    /// Two settings of the CPU lane (side A as found, side B set by <paramref name="useB"/>(true)), each with the router's
    /// learned speeds of its own: switching sets the current side's speeds aside and puts the other's back (side B's first
    /// time starts from side A's).
    /// </summary>
    private sealed class LearnedSides(Fiddler.Actors.Scheduling.ExpertRouter router, Action<bool> useB)
    {
        private Fiddler.Actors.Scheduling.ExpertRouter.LearnedSpeeds _speedsA = router.SaveLearned();
        private bool _onB;

        /// <summary>Side B's speeds as of its last switch away (null before it ran).</summary>
        public Fiddler.Actors.Scheduling.ExpertRouter.LearnedSpeeds? SpeedsB { get; private set; }

        public void Use(bool sideB)
        {
            if (sideB == _onB) return;
            if (_onB) SpeedsB = router.SaveLearned();
            else _speedsA = router.SaveLearned();
            useB(sideB);
            if (!sideB) router.RestoreLearned(_speedsA);
            else if (SpeedsB is not null) router.RestoreLearned(SpeedsB);
            _onB = sideB;
        }

        /// <summary>Back on side A with its speeds, side B's dropped (after a failure).</summary>
        public void Abandon()
        {
            if (!_onB) return;
            useB(false);
            router.RestoreLearned(_speedsA);
            _onB = false;
        }
    }
}

using Fiddler.Actors.Engine;

namespace Fiddler.Host.Cli;

// The bench's in-process comparisons: decode through the actor runtime vs directly (--actors), and the lane-order
// balance on vs off (--ab-balance).
public static partial class BenchRun
{
    /// <summary>
    /// Decode through Kernels' generator directly, then through the actor runtime (router, layer and CPU pool actors,
    /// GPU device actor), same prompt and greedy tokens: the difference is the actors' cost per step.
    /// </summary>
    public static async Task<ActorComparison> ActorOverhead(OffloadEngine engine, int promptTokens,
        int generate, Fiddler.Kernels.Offload.CpuMerge merge = Fiddler.Kernels.Offload.CpuMerge.Gated, int rounds = 5,
        bool prefetchRows = true, bool spinKernelGate = false)
    {
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
        for (int round = 0; round < rounds; round++)
        {
            async Task Actors()
            {
                await using (var runtime = Fiddler.Actors.Runtime.FiddlerRuntime.Start(engine.Model, null, offload, merge: merge,
                    prefetchRows: prefetchRows, spinKernelGate: spinKernelGate))
                {
                    await runtime.RunAsync(prompt, warmUp);
                    actors[round] = (await runtime.RunAsync(prompt, options)).DecodeTokensPerSecond;
                }
                engine.Model.SetExpertExecutor(engine.Executor); // disposing the runtime cleared it
            }
            void Direct()
            {
                engine.Model.SetExpertExecutor(engine.Executor);
                direct[round] = generator.Run(prompt, options).DecodeTokensPerSecond;
            }
            if (round % 2 == 0) { Direct(); await Actors(); }
            else { await Actors(); Direct(); }
        }
        engine.Model.SetExpertExecutor(engine.Executor);
        double overhead = Median(direct.Zip(actors, (d, a) => (d / a - 1) * 100));
        return new ActorComparison(Median(direct), Median(actors), overhead, direct, actors);
    }

    /// <summary>One decode window of an A/B: tok/s, the share of its gated decode layers the CPU lane ended last, and
    /// the host's mean hand-off between layers (ms; 0 where not measured: off CUDA).</summary>
    public readonly record struct WindowStats(double TokS, double CpuEndedLastShare, double HandoffHostMs);

    /// <summary>
    /// <c>--ab-balance N</c>: N pairs of decode windows in this process, the lane-order balance on in one window of each
    /// pair and off in the other (the order alternating pair by pair), each from the same position and token as the
    /// first main window, on the same placement and learned speeds: free of the spread between separate processes (not
    /// of the host's drift within one, which the alternation spreads over both sides). <paramref name="MedianDiffPct"/>:
    /// the median of the pairs' (on / off − 1) × 100.
    /// </summary>
    public sealed record BalanceComparison(WindowStats[] On, WindowStats[] Off, double[] PairDiffPct, double MedianDiffPct, double BalanceAtStart);

    /// <summary>Decode tok/s directly and through the actors (medians and every round) and the median per-round overhead.</summary>
    public sealed record ActorComparison(double Direct, double Actors, double OverheadPct, double[] DirectRuns, double[] ActorRuns);

    /// <summary>
    /// <paramref name="pairs"/> pairs of <paramref name="window"/>s with <paramref name="router"/>'s lane-order balance on
    /// and off, on first in even pairs and off first in odd ones (a drift charges both sides alike); the router's setting
    /// is restored afterwards.
    /// </summary>
    public static BalanceComparison CompareBalance(Fiddler.Actors.Scheduling.ExpertRouter router, int pairs, Func<WindowStats> window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        bool configured = router.BalanceLastLane;
        double atStart = router.LaneBalance;
        var on = new WindowStats[pairs];
        var off = new WindowStats[pairs];
        try
        {
            for (int p = 0; p < pairs; p++)
                foreach (bool balance in p % 2 == 0 ? new[] { true, false } : [false, true])
                {
                    router.BalanceLastLane = balance;
                    (balance ? on : off)[p] = window();
                }
        }
        finally { router.BalanceLastLane = configured; }
        double[] diff = on.Zip(off, (a, b) => Math.Round((a.TokS / b.TokS - 1) * 100, 2)).ToArray();
        return new BalanceComparison(on, off, diff, Median(diff), atStart);
    }
}

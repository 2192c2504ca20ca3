using System.Text.Json;
using Xunit;

namespace Fiddler.Tests.Host;

// fiddler bench's in-process comparisons (--ab-pipeline, --ab-read-scales, --ab-balance, --ab-cpu-threads, --ab-kernel).
public sealed partial class BenchCommandTests
{
    [Fact]
    public void Bench_AbPipeline_AlternatesPipelinedAndSteppedWindows()
    {
        using var json = BenchJson("--new-tokens", "3", "--ab-pipeline", "2");
        var root = json.RootElement;
        var ab = root.GetProperty("ab_pipeline");
        Assert.Equal(2, ab.GetProperty("pairs").GetInt32());
        double[] on = ab.GetProperty("pipelined_tok_s").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double[] off = ab.GetProperty("stepped_tok_s").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double[] gain = ab.GetProperty("pair_gain_pct").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.All(on.Concat(off), x => Assert.True(x > 0));
        for (int i = 0; i < 2; i++) Assert.Equal((on[i] / off[i] - 1) * 100, gain[i], 0.1);
        Assert.True(root.GetProperty("decode_pipeline").GetBoolean());
        using var stepped = BenchJson("--new-tokens", "3", "--no-decode-pipeline");
        Assert.False(stepped.RootElement.GetProperty("decode_pipeline").GetBoolean());
        Assert.Equal(JsonValueKind.Null, stepped.RootElement.GetProperty("ab_pipeline").ValueKind);
    }

    [Fact]
    public void Bench_PipelineAndReadScaleOptions_ContradictionsAreClearErrors()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        CliResult Run(params string[] flags) => CliHarness.Run(["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", .. flags,
            "--out", Path.Combine(_dir, "refused"), "--profile", Path.Combine(_dir, "profile.json")]);
        Assert.Contains("leave out --no-decode-pipeline", Run("--ab-pipeline", "2", "--no-decode-pipeline").Err);
        Assert.Contains("--ab-pipeline: 51 is not in 0..50", Run("--ab-pipeline", "51").Err);
        Assert.Contains("leave out --no-read-scales", Run("--ab-read-scales", "2", "--no-read-scales").Err);
        Assert.Contains("--ab-read-scales needs the learned router", Run("--ab-read-scales", "2", "--routing", "cpu").Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "refused")));
    }

    [Fact]
    public void Bench_CeilingWindows_OffCuda_RunsTheWindowsAndSaysTheProbeNeedsCuda()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string outDir = Path.Combine(_dir, "results-ceiling");
        var r = CliHarness.Run(["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8", "--new-tokens", "3",
            "--ceiling-windows", "3", "--out", outDir, "--profile", Path.Combine(_dir, "profile.json")]);
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Err}");
        Assert.Contains("no lane ceiling could be measured", r.Err);
        using var json = JsonDocument.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(outDir, "*.json"))));
        var cw = json.RootElement.GetProperty("ceiling_windows");
        var rounds = cw.GetProperty("rounds").EnumerateArray().ToArray();
        Assert.Equal(3, rounds.Length);
        Assert.All(rounds, x =>
        {
            Assert.True(x.GetProperty("tok_s").GetDouble() > 0);
            Assert.InRange(x.GetProperty("offloaded_gb_per_token").GetDouble(), 0, 1);
            Assert.Equal(JsonValueKind.Null, x.GetProperty("ceiling_tok_s").ValueKind);
        });
        Assert.Equal(JsonValueKind.Null, cw.GetProperty("tok_s_vs_ceiling_r").ValueKind);
        Assert.Equal(JsonValueKind.Null, cw.GetProperty("fraction").ValueKind);
    }

    [Fact]
    public void Bench_CeilingWindows_BadValuesAreClearErrors()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        CliResult Run(params string[] flags) => CliHarness.Run(["bench", "--model", model, "--device", "cpu", .. flags,
            "--out", Path.Combine(_dir, "refused-ceiling"), "--profile", Path.Combine(_dir, "profile.json")]);
        Assert.Contains("--ceiling-windows: 51 is not in 0..50", Run("--gpu-budget", "1MiB", "--ceiling-windows", "51").Err);
        Assert.Contains("--ceiling-windows: -1 is not in 0..50", Run("--gpu-budget", "1MiB", "--ceiling-windows", "-1").Err);
        Assert.Contains("--ceiling-windows probes the lanes that move host experts: give --gpu-budget", Run("--ceiling-windows", "2").Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "refused-ceiling")));
    }

    [Fact]
    public void Bench_AbReadScales_OnFixtureTooSmallToTime_SaysSoAndReportsNoComparison()
    {
        // The fixture's expert matrices are under the 1 MiB a read is timed in: nothing measured, nothing to compare.
        using var json = BenchJson("--new-tokens", "3", "--ab-read-scales", "2");
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("read_scales").ValueKind);
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("ab_read_scales").ValueKind);
    }

    [Fact]
    public void Bench_AbReadScales_OnExpertsBigEnoughToTime_ComparesEvenWhereTheEngineDoesNotPlanByThem()
    {
        // fp32 experts of 512 × 1024 (2 MiB matrices: timed); a 24 MiB budget keeps all 8 in host memory.
        string model = Path.Combine(_dir, "timed-model");
        Fiddler.Tests.Support.TinyCheckpoint.Write(model, Fiddler.Tests.Support.TinyCheckpoint.Config() with { HiddenSize = 512, IntermediateSize = 1024 });
        string outDir = Path.Combine(_dir, "results-read-scales");
        var r = CliHarness.Run(["bench", "--model", model, "--device", "cpu", "--gpu-budget", "24MiB", "--prompt-tokens", "8", "--new-tokens", "3",
            "--ab-read-scales", "2", "--out", outDir, "--profile", Path.Combine(_dir, "profile-timed.json")]);
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Err}");
        using var json = JsonDocument.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(outDir, "*.json"))));
        var scales = json.RootElement.GetProperty("read_scales");
        Assert.Equal(8, scales.GetProperty("experts").GetInt32());
        bool planned = scales.GetProperty("planned_by").GetBoolean(); // after the comparison: the engine's own choice again
        var ab = json.RootElement.GetProperty("ab_read_scales");
        Assert.Equal(2, ab.GetProperty("pairs").GetInt32());
        Assert.Equal(!planned, ab.GetProperty("forced").GetBoolean());
        Assert.All(ab.GetProperty("with_tok_s").EnumerateArray().Concat(ab.GetProperty("without_tok_s").EnumerateArray()), x => Assert.True(x.GetDouble() > 0));
        if (!planned) Assert.Contains("the side with them plans by them for the comparison", r.Err);
    }

    [Fact]
    public void Bench_AbBalance_AlternatesBothSettingsInOneProcessAndRestoresTheDefault()
    {
        // Three pairs: the last window runs with the balance off, so the restored default is seen in the JSON.
        using var json = BenchJson("--new-tokens", "3", "--ab-balance", "3");
        var root = json.RootElement;
        var ab = root.GetProperty("ab_balance");
        Assert.Equal(3, ab.GetProperty("pairs").GetInt32());
        double[] on = ab.GetProperty("on_tok_s").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double[] off = ab.GetProperty("off_tok_s").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double[] diff = ab.GetProperty("pair_diff_pct").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(3, on.Length);
        Assert.Equal(3, off.Length);
        Assert.All(on.Concat(off), x => Assert.True(x > 0));
        for (int i = 0; i < 3; i++) Assert.Equal((on[i] / off[i] - 1) * 100, diff[i], 0.1);
        Assert.Equal(diff.Order().ElementAt(1), ab.GetProperty("median_diff_pct").GetDouble(), 2);
        Assert.Equal(3, ab.GetProperty("on_cpu_ended_last").GetArrayLength());
        Assert.Equal(3, ab.GetProperty("off_handoff_host_ms").GetArrayLength());
        Assert.Equal(1.0, ab.GetProperty("lane_balance_at_start").GetDouble()); // off CUDA nothing teaches it
        Assert.True(root.GetProperty("balance_last_lane").GetBoolean()); // restored after the comparison
        // The comparison rewinds the cache instead of growing it: the same placement as a run without it.
        using var plain = BenchJson("--new-tokens", "3");
        Assert.Equal(plain.RootElement.GetProperty("context_tokens").GetInt32(), root.GetProperty("context_tokens").GetInt32());
    }

    [Fact]
    public void Bench_AbBalanceOutOfRange_IsAClearError()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        var r = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--ab-balance", "51",
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--ab-balance: 51 is not in 0..50", r.Err);
        var noAdapt = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--ab-balance", "2", "--no-adapt",
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json"));
        Assert.Equal(2, noAdapt.ExitCode);
        Assert.Contains("--ab-balance needs the learned router", noAdapt.Err);
    }

    [Fact]
    public void CompareBalance_AlternatesTheOrderAndRestoresTheRoutersSetting()
    {
        var router = new Fiddler.Actors.Scheduling.ExpertRouter(Fiddler.Tests.Actors.Scheduling.HardwareProfileTests.H100(),
            new Fiddler.Actors.Scheduling.RouterOptions(BalanceLastLane: false));
        var seen = new List<bool>();
        double tokS = 10;
        var cmp = Fiddler.Host.Cli.BenchRun.CompareBalance(router, 3, () => { seen.Add(router.BalanceLastLane); return new(tokS++, 0.5, 0.3); });
        Assert.Equal([true, false, false, true, true, false], seen);
        Assert.Equal([10.0, 13, 14], cmp.On.Select(w => w.TokS));
        Assert.Equal([11.0, 12, 15], cmp.Off.Select(w => w.TokS));
        Assert.Equal(1.0, cmp.BalanceAtStart);
        Assert.False(router.BalanceLastLane);
        Assert.Equal(Math.Round((14.0 / 15 - 1) * 100, 2), cmp.MedianDiffPct, 9); // of −9.09, +8.33, −6.67
        Assert.Throws<ArgumentOutOfRangeException>(() => Fiddler.Host.Cli.BenchRun.CompareBalance(router, 0, () => new(1, 0, 0)));
        // A failing window still restores the setting.
        Assert.Throws<InvalidOperationException>(() => Fiddler.Host.Cli.BenchRun.CompareBalance(router, 1, () => throw new InvalidOperationException()));
        Assert.False(router.BalanceLastLane);
    }

    [Fact]
    public void CompareReadScales_WhereTheEngineDoesNotPlanByThem_ForcesThemThenRestoresTheEnginesPlanAndSpeeds()
    {
        var router = new Fiddler.Actors.Scheduling.ExpertRouter(Fiddler.Tests.Actors.Scheduling.HardwareProfileTests.H100());
        var scheduler = new Fiddler.Actors.Engine.RouterScheduler(router);
        var measured = new Fiddler.Actors.Scheduling.HostReadScales(2, 4, [(0, 1, 100), (1, 2, 120)]);
        var before = router.SaveLearned();
        var log = new List<string>();
        var seen = new List<bool>(); // whether a window planned by scales
        double factor = 1.5;
        Fiddler.Host.Cli.BenchRun.WindowStats Window()
        {
            seen.Add(scheduler.UseReadScales && scheduler.ReadScales is not null);
            // Each window teaches the router something of its own.
            var now = router.SaveLearned();
            router.RestoreLearned(now with { Contended = now.Contended.Select(_ => factor += 0.1).ToArray() });
            return new(5, 0.5, 0.3);
        }

        var forced = Fiddler.Host.Cli.BenchRun.CompareReadScales(scheduler, measured, 2, Window, log.Add);

        Assert.NotNull(forced);
        Assert.True(forced.Forced);
        Assert.Equal([false, true, false, false, true], seen); // the discarded window without, then with first in even pairs
        Assert.Contains(log, l => l.Contains("the side with them plans by them for the comparison"));
        // The engine plans without scales again, on the speeds it had learned without them.
        Assert.Null(scheduler.ReadScales);
        Assert.Equal(before.Contended, router.SaveLearned().Contended);

        // Where the engine plans by them: not forced, and they stay in use.
        scheduler.ReadScales = measured;
        var planned = Fiddler.Host.Cli.BenchRun.CompareReadScales(scheduler, measured, 1, Window, log.Add);
        Assert.False(planned!.Forced);
        Assert.Same(measured, scheduler.ReadScales);
        Assert.True(scheduler.UseReadScales);

        // Nothing measured: nothing to compare, and said so.
        scheduler.ReadScales = null;
        Assert.Null(Fiddler.Host.Cli.BenchRun.CompareReadScales(scheduler, null, 1, Window, log.Add));
        Assert.Contains(log, l => l.Contains("no read scales were measured"));
    }

    [Fact]
    public void CompareCpuThreads_AlternatesParticipantsEachWithItsOwnLearnedSpeedsAndRestores()
    {
        var router = new Fiddler.Actors.Scheduling.ExpertRouter(Fiddler.Tests.Actors.Scheduling.HardwareProfileTests.H100(),
            new Fiddler.Actors.Scheduling.RouterOptions(Fiddler.Actors.Scheduling.RoutingMode.Auto, 2, 16, SplitExperts: true, CpuContention: 1));
        using var pool = new Fiddler.Kernels.Experts.CpuWorkerPool(threads: 4);
        var plan = router.Decide([new(5, 1, false), new(6, 1, false)]);
        Assert.True(plan.HasCpuWork && plan.HasTransfers, "a plan that teaches the factor beside transfers");
        var seen = new List<int>();
        double slower = 1;
        // Each window "observes" a CPU lane as slow as its participant count says: 4 → ×1, 2 → ×2 (times `slower`).
        Fiddler.Host.Cli.BenchRun.WindowStats Window()
        {
            int n = pool.ActiveConcurrency;
            seen.Add(n);
            for (int i = 0; i < 100; i++)
            {
                var p = router.Decide([new(5, 1, false), new(6, 1, false)]);
                router.Account(p, [], observedCpuLaneMs: p.CpuLaneMs / p.CpuFactor * 4.0 / n * slower);
            }
            return new(n, 0.5, 0.3);
        }
        var cmp = Fiddler.Host.Cli.BenchRun.CompareCpuThreads(router, pool, 2, 2, Window);
        Assert.Equal([2, 2, 4, 4, 2], seen); // a discarded window for the fewer side, then fewer first in even pairs
        Assert.Equal((4, 2), (cmp.Full, cmp.Fewer));
        Assert.Equal([4.0, 4], cmp.FullRuns.Select(w => w.TokS));
        Assert.Equal([2.0, 2], cmp.FewerRuns.Select(w => w.TokS));
        Assert.Equal([-50.0, -50], cmp.PairDiffPct);
        Assert.Equal(-50, cmp.MedianDiffPct, 9);
        // Each side kept its own factor: ~1 for the full pool, ~2 for half of it; the router is back on the full side's.
        Assert.InRange(cmp.FullCpuFactor, 0.95, 1.05);
        Assert.InRange(cmp.FewerCpuFactor, 1.9, 2.1);
        Assert.Equal(cmp.FullCpuFactor, router.CpuFactors.Contended, 9);
        Assert.Equal(4, pool.ActiveConcurrency);
        Assert.Throws<ArgumentOutOfRangeException>(() => Fiddler.Host.Cli.BenchRun.CompareCpuThreads(router, pool, 4, 1, Window));

        // An odd number of pairs ends on the full side: its factor is reported as learned in that last window. Here the
        // full side's lane turns 1.5× slower after the first comparison, so only its own windows can teach that.
        slower = 1.5;
        seen.Clear();
        var odd = Fiddler.Host.Cli.BenchRun.CompareCpuThreads(router, pool, 2, 3, Window);
        Assert.Equal([2, 2, 4, 4, 2, 2, 4], seen);
        Assert.InRange(odd.FullCpuFactor, 1.45, 1.55);
        Assert.Equal(odd.FullCpuFactor, router.CpuFactors.Contended, 9);
        Assert.InRange(odd.FewerCpuFactor, 2.9, 3.1);

        // A window that fails after teaching the fewer side something still restores the pool and the full side's speeds.
        double fullBefore = router.CpuFactors.Contended;
        Assert.Throws<InvalidOperationException>(() => Fiddler.Host.Cli.BenchRun.CompareCpuThreads(router, pool, 2, 1, () =>
        {
            Window();
            throw new InvalidOperationException();
        }));
        Assert.Equal(4, pool.ActiveConcurrency);
        Assert.Equal(fullBefore, router.CpuFactors.Contended, 9);
    }

    [Fact]
    public void Bench_AbCpuThreads_ReportsBothSidesAndRejectsBadCounts()
    {
        using var json = BenchJson("--new-tokens", "3", "--cpu-threads", "3", "--ab-cpu-threads", "1", "--ab-pairs", "2");
        var ab = json.RootElement.GetProperty("ab_cpu_threads");
        Assert.Equal(2, ab.GetProperty("pairs").GetInt32());
        Assert.Equal([3, 1], ab.GetProperty("threads").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(2, ab.GetProperty("full_tok_s").GetArrayLength());
        Assert.All(ab.GetProperty("fewer_tok_s").EnumerateArray(), x => Assert.True(x.GetDouble() > 0));
        Assert.Equal(2, ab.GetProperty("cpu_factor").GetArrayLength());
        Assert.Equal(3, json.RootElement.GetProperty("cpu_threads").GetInt32());

        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string[] Args(params string[] extra) => ["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8", "--new-tokens", "3", .. extra,
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json")];
        var tooMany = CliHarness.Run(Args("--cpu-threads", "3", "--ab-cpu-threads", "3"));
        Assert.Equal(2, tooMany.ExitCode);
        Assert.Contains("--ab-cpu-threads: 3 is not fewer than the pool's 3 participants", tooMany.Err);
        var pairs = CliHarness.Run(Args("--ab-cpu-threads", "1", "--ab-pairs", "0"));
        Assert.Equal(2, pairs.ExitCode);
        Assert.Contains("--ab-pairs: 0 is not in 1..50", pairs.Err);
        var pairsAlone = CliHarness.Run(Args("--ab-pairs", "3"));
        Assert.Equal(2, pairsAlone.ExitCode);
        Assert.Contains("--ab-pairs counts the pairs of --ab-cpu-threads", pairsAlone.Err);
        var noAdapt = CliHarness.Run(Args("--ab-cpu-threads", "1", "--no-adapt"));
        Assert.Equal(2, noAdapt.ExitCode);
        Assert.Contains("--ab-cpu-threads and --ab-kernel need the learned router", noAdapt.Err);
        var noBudget = CliHarness.Run(["bench", "--model", model, "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "3", "--ab-cpu-threads", "1",
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json")]);
        Assert.Equal(2, noBudget.ExitCode);
        Assert.Contains("give --gpu-budget", noBudget.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "results")));
    }

    [Fact]
    public void Bench_AbKernel_ReportsBothTuningsRestoresTheConfiguredOneAndRejectsBadSettings()
    {
        var before = Fiddler.Kernels.Experts.CpuKernelSettings.Current;
        using (var json = BenchJson("--new-tokens", "3", "--ab-kernel", "2048,l2,1,64,adjacent", "--ab-pairs", "2"))
        {
            var ab = json.RootElement.GetProperty("ab_kernel");
            Assert.Equal(2, ab.GetProperty("pairs").GetInt32());
            Assert.Equal([before.ToString(), $"2048,l2,1,64,adjacent,{Fiddler.Kernels.Experts.CpuKernelTuning.TailItemBytes / 1024}"], ab.GetProperty("settings").EnumerateArray().Select(x => x.GetString()));
            Assert.Equal(before.ToString(), json.RootElement.GetProperty("cpu_kernel").GetString()); // the configured one, restored
            Assert.All(ab.GetProperty("other_tok_s").EnumerateArray(), x => Assert.True(x.GetDouble() > 0));
            Assert.Equal(2, ab.GetProperty("configured_tok_s").GetArrayLength());
            Assert.Equal(2, ab.GetProperty("other_kernel_gb_s").GetArrayLength());
            Assert.Equal(2, ab.GetProperty("pair_diff_pct").GetArrayLength());
            Assert.Equal(2, ab.GetProperty("cpu_factor").GetArrayLength());
        }
        Assert.Equal(before, Fiddler.Kernels.Experts.CpuKernelSettings.Current);

        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string[] Args(params string[] extra) => ["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8", "--new-tokens", "3", .. extra,
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json")];
        foreach (var (spec, message) in new[]
        {
            ("2048,l9,1", "--ab-kernel: 'l9' is not a prefetch level"), ("100,l1,0", "--ab-kernel: '100' is not a prefetch distance"),
            ("1024,l1", "--ab-kernel: '1024,l1' is not PREFETCH_BYTES,LEVEL,NEXT_ROWS"), ("1024,l1,0,64,diagonal", "--ab-kernel: 'diagonal' is not a row order"), ("1024,l1,1,8", "--ab-kernel: '8' is not a work-item size"),
            ("1024,l1,2", "--ab-kernel: '2' is not a next-rows switch"),
        })
        {
            var bad = CliHarness.Run(Args("--ab-kernel", spec));
            Assert.Equal(2, bad.ExitCode);
            Assert.Contains(message, bad.Err);
        }
        var noAdapt = CliHarness.Run(Args("--ab-kernel", "1024,l1,1", "--no-adapt"));
        Assert.Equal(2, noAdapt.ExitCode);
        Assert.Contains("need the learned router", noAdapt.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "results")));
    }
}

using System.Text.Json;
using Xunit;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Host;

/// <summary><c>fiddler bench</c> end to end on a fixture model, on the CPU device, under a budget that offloads every expert.</summary>
[Collection(ConsoleCollection.Name)]
public sealed class BenchCommandTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Bench_DecodeRepeats_ReportsEachWindowAndTheirMedian()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string outDir = Path.Combine(_dir, "results");
        var r = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8,16",
            "--new-tokens", "5", "--decode-repeats", "3", "--staging-slots", "1", "--out", outDir, "--profile", Path.Combine(_dir, "profile.json"));
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Err}");
        string file = Assert.Single(Directory.GetFiles(outDir, "*.json"));
        using var json = JsonDocument.Parse(File.ReadAllText(file));
        var root = json.RootElement;
        double[] runs = root.GetProperty("decode_tok_s_runs").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(3, runs.Length);
        Assert.All(runs, x => Assert.True(x > 0));
        Assert.Equal(runs.Order().ElementAt(1), root.GetProperty("decode_tok_s").GetDouble(), 3);
        Assert.Equal(2, root.GetProperty("ttft_s").EnumerateObject().Count());
        // Each length also right after one of its own size.
        Assert.Equal(["8", "16"], root.GetProperty("ttft_warm_s").EnumerateObject().Select(p => p.Name));
        Assert.All(root.GetProperty("ttft_warm_s").EnumerateObject(), p => Assert.True(p.Value.GetDouble() > 0));
        // 4 steps × 3 windows of decode layers only: every layer of every step is one observed layer.
        Assert.Equal(root.GetProperty("layers").GetInt32(), root.GetProperty("executor_ms_per_layer").GetProperty("layers_per_token").GetDouble(), 2);
        // Per batch size: CPU alone, beside copies, copies, and the layers that taught it.
        Assert.Equal(["max_16", "max_64", "over_64"], root.GetProperty("batch_factors").EnumerateObject().Select(p => p.Name));
        Assert.All(root.GetProperty("batch_factors").EnumerateObject(), p => Assert.Equal(4, p.Value.GetArrayLength()));
        // The engine's start-up warm-up ran first: prompts that fit the run's context with the decode steps after them.
        int[] warmup = [.. root.GetProperty("warmup_prompt_tokens").EnumerateArray().Select(x => x.GetInt32())];
        Assert.NotEmpty(warmup);
        Assert.All(warmup, n => Assert.InRange(n, 1, root.GetProperty("context_tokens").GetInt32() - Fiddler.Actors.Engine.WarmupPlan.DecodeSteps));
        Assert.True(root.GetProperty("warmup_s").GetDouble() > 0);
        // The decode windows' GC, and the SIMD kernel's own regions where it ran (the calibrated profile may give every CPU
        // expert to libtorch, as on a 2-core box; then there are none).
        Assert.Equal(["gen0", "gen1", "gen2", "pause_ms_per_token", "allocated_kb_per_token"], root.GetProperty("gc_decode").EnumerateObject().Select(p => p.Name));
        Assert.True(root.GetProperty("gc_decode").GetProperty("allocated_kb_per_token").GetDouble() > 0);
        var kernel = root.GetProperty("kernel_decode");
        Assert.True(kernel.ValueKind == JsonValueKind.Null
            || kernel.GetProperty("regions").GetDouble() > 0 && kernel.GetProperty("gb_s").GetDouble() > 0, kernel.ToString());
        Assert.True(root.GetProperty("readback_spin_us").GetInt32() >= 0);
        Assert.Equal(1, root.GetProperty("staging_slots").GetInt32());
        Assert.Equal(JsonValueKind.Number, root.GetProperty("reserve_gib").ValueKind); // a toy model's reserve rounds to 0 GiB
        Assert.Equal(JsonValueKind.Null, root.GetProperty("gpu_memory_used_gib").ValueKind); // CPU device
        Assert.Equal(JsonValueKind.Null, root.GetProperty("lane_ceiling").ValueKind);        // no copy engine to measure
        Assert.True(root.GetProperty("balance_last_lane").GetBoolean()); // the default
        var executor = root.GetProperty("executor_ms_per_layer");
        Assert.Equal(1.0, executor.GetProperty("lane_balance").GetDouble());
        Assert.Equal(0, executor.GetProperty("lane_order_layers").GetInt64());              // no device timings off CUDA
        Assert.InRange(root.GetProperty("cpu_ended_last_target").GetDouble(), 0.2, 0.8);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("9")]
    public void Bench_StagingSlotsOutOfRange_OneErrorLineBeforeBuilding(string slots)
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        var r = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--staging-slots", slots,
            "--out", Path.Combine(_dir, "results"), "--profile", Path.Combine(_dir, "profile.json"));
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains($"--staging-slots: {slots} is not in 1..8", r.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "results")));
    }

    /// <summary>Runs the bench on the fixture model with a prompt of 8 tokens and <paramref name="flags"/>; its JSON.</summary>
    private JsonDocument BenchJson(params string[] flags)
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string outDir = Path.Combine(_dir, "results-" + Guid.NewGuid().ToString("N")); // one per run: a test may run two
        var r = CliHarness.Run(["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8",
            .. flags, "--out", outDir, "--profile", Path.Combine(_dir, "profile.json")]);
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Err}");
        return JsonDocument.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(outDir, "*.json"))));
    }

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
    public void Bench_AbReadScales_OnFixtureTooSmallToTime_SaysSoAndReportsNoComparison()
    {
        // The fixture's expert matrices are under the 1 MiB a read is timed in: nothing measured, nothing to compare.
        using var json = BenchJson("--new-tokens", "3", "--ab-read-scales", "2");
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("read_scales").ValueKind);
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("ab_read_scales").ValueKind);
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
        using (var json = BenchJson("--new-tokens", "3", "--ab-kernel", "2048,l2,1,64", "--ab-pairs", "2"))
        {
            var ab = json.RootElement.GetProperty("ab_kernel");
            Assert.Equal(2, ab.GetProperty("pairs").GetInt32());
            Assert.Equal([before.ToString(), "2048,l2,1,64"], ab.GetProperty("settings").EnumerateArray().Select(x => x.GetString()));
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
            ("1024,l1", "--ab-kernel: '1024,l1' is not PREFETCH_BYTES,LEVEL,NEXT_ROWS"), ("1024,l1,1,8", "--ab-kernel: '8' is not a work-item size"),
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

    [Fact]
    public void Bench_BatchAdaptRate_IsReportedAndChecked()
    {
        using (var json = BenchJson("--new-tokens", "3"))
            Assert.Equal(0.25, json.RootElement.GetProperty("batch_adapt_rate").GetDouble());
        using (var json = BenchJson("--new-tokens", "3", "--batch-adapt-rate", "0.05"))
            Assert.Equal(0.05, json.RootElement.GetProperty("batch_adapt_rate").GetDouble());
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        var bad = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--batch-adapt-rate", "1.5",
            "--out", Path.Combine(_dir, "bad"), "--profile", Path.Combine(_dir, "profile.json"));
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--batch-adapt-rate: 1.5 is not in (0, 1]", bad.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));
    }

    [Fact]
    public void Bench_NoWarmup_SkipsTheEnginesWarmupAndSaysSo()
    {
        using var json = BenchJson("--new-tokens", "3", "--no-warmup");
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("warmup_prompt_tokens").ValueKind);
        // The bench's own short warm-up (kernels, allocator) still ran and is timed.
        Assert.True(json.RootElement.GetProperty("warmup_s").GetDouble() > 0);
    }

    [Fact]
    public void Bench_NoBalanceLastLane_IsPassedToTheRouterAndReported()
    {
        using var json = BenchJson("--new-tokens", "3", "--no-balance-last-lane");
        Assert.False(json.RootElement.GetProperty("balance_last_lane").GetBoolean());
        // Off CUDA no layer has device timings, so the balance has nothing to learn from and stays at 1.
        Assert.Equal(1.0, json.RootElement.GetProperty("executor_ms_per_layer").GetProperty("lane_balance").GetDouble());
    }

    [Fact]
    public void Bench_Actors_ReportsEveryRoundOfBothPaths()
    {
        using var json = BenchJson("--new-tokens", "4", "--actors");
        var root = json.RootElement;
        double[] direct = root.GetProperty("decode_tok_s_generator_runs").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        double[] actors = root.GetProperty("decode_tok_s_actors_runs").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(5, direct.Length); // the default --actor-rounds
        Assert.Equal(5, actors.Length);
        Assert.All(direct.Concat(actors), x => Assert.True(x > 0));
        Assert.Equal(direct.Order().ElementAt(2), root.GetProperty("decode_tok_s_generator").GetDouble(), 3);
        Assert.Equal(actors.Order().ElementAt(2), root.GetProperty("decode_tok_s_actors").GetDouble(), 3);
        double[] ratios = direct.Zip(actors, (d, a) => (d / a - 1) * 100).Order().ToArray();
        // Recomputed from runs rounded to 3 decimals: equal within 0.1 percentage points, not to the last digit.
        Assert.InRange(root.GetProperty("actor_overhead_pct").GetDouble(), ratios[2] - 0.1, ratios[2] + 0.1);
        // Without --cpu-threads the actor rounds run the pool as serve does: cores − 2 (the direct path: cores − 1).
        Assert.Equal(Math.Max(1, Environment.ProcessorCount - 1), root.GetProperty("cpu_threads").GetInt32());
        Assert.Equal(Math.Max(1, Environment.ProcessorCount - 2), root.GetProperty("actor_cpu_threads").GetInt32());
        var memory = root.GetProperty("gpu_memory_actor_rounds_gib").EnumerateArray().ToArray();
        Assert.Equal(6, memory.Length); // before the rounds and after each
        Assert.All(memory, m => Assert.Equal(JsonValueKind.Null, m.ValueKind)); // CPU device

        using var three = BenchJson("--new-tokens", "3", "--actors", "--actor-rounds", "3");
        Assert.Equal(3, three.RootElement.GetProperty("decode_tok_s_actors_runs").GetArrayLength());
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string[] Args(params string[] extra) => ["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8", "--new-tokens", "3", .. extra,
            "--out", Path.Combine(_dir, "bad"), "--profile", Path.Combine(_dir, "profile.json")];
        var zero = CliHarness.Run(Args("--actors", "--actor-rounds", "0"));
        Assert.Equal(2, zero.ExitCode);
        Assert.Contains("--actor-rounds: 0 is not in 1..50", zero.Err);
        var alone = CliHarness.Run(Args("--actor-rounds", "3"));
        Assert.Equal(2, alone.ExitCode);
        Assert.Contains("--actor-rounds counts the rounds of --actors", alone.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));

        // Without a budget the engine has no CPU pool: the rounds run as they are, with no participants to report.
        string outDir = Path.Combine(_dir, "nobudget");
        var whole = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "3", "--actors", "--actor-rounds", "1",
            "--out", outDir, "--profile", Path.Combine(_dir, "profile.json"));
        Assert.True(whole.ExitCode == 0, $"exit {whole.ExitCode}: {whole.Err}");
        using var noPool = JsonDocument.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(outDir, "*.json"))));
        Assert.Equal(JsonValueKind.Null, noPool.RootElement.GetProperty("actor_cpu_threads").ValueKind);
        Assert.True(noPool.RootElement.GetProperty("decode_tok_s_actors").GetDouble() > 0);
    }

    [Fact]
    public async Task ActorOverhead_RunsTheActorRoundsOnServesPoolAndRestoresTheDirectPathsPoolAndSpeeds()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        using var engine = Fiddler.Actors.Engine.OffloadEngine.Create(new Fiddler.Actors.Engine.EngineOptions
        {
            ModelDir = model, Device = TorchSharp.torch.CPU, GpuBudgetBytes = 1 << 20, ContextTokens = 64, CpuThreads = 3,
            ProfilePath = Path.Combine(_dir, "profile.json"),
        }, _ => { });
        var pool = engine.CpuPool!;
        // Only the actor rounds run on 2 participants: a direct window here runs on all 3.
        var cmp = await Fiddler.Host.Cli.BenchRun.ActorOverhead(engine, 8, 4, rounds: 2, actorParticipants: 2);
        Assert.Equal(2, cmp.ActorParticipants);
        Assert.Equal(3, pool.ActiveConcurrency);
        Assert.All(cmp.DirectRuns.Concat(cmp.ActorRuns), x => Assert.True(x > 0));
        Assert.Equal(3, cmp.MemoryGiB.Length);

        var same = await Fiddler.Host.Cli.BenchRun.ActorOverhead(engine, 8, 4, rounds: 1);
        Assert.Equal(3, same.ActorParticipants);
        Assert.Equal(3, pool.ActiveConcurrency);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => Fiddler.Host.Cli.BenchRun.ActorOverhead(engine, 8, 4, rounds: 1, actorParticipants: 4));
        Assert.Equal(3, pool.ActiveConcurrency);
    }
}

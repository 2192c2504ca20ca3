using System.Text.Json;
using Xunit;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Host;

/// <summary><c>fiddler bench</c> end to end on a fixture model, on the CPU device, under a budget that offloads every expert.</summary>
[Collection(ConsoleCollection.Name)]
public sealed partial class BenchCommandTests : IDisposable
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
        Assert.Equal(["gen0", "gen1", "gen2", "pause_ms_per_token", "allocated_kb_per_token", "last_generation", "last_pause_ms", "last_gen0_before_mb",
            "last_promoted_mb", "last_finalization_pending", "last_pinned_objects", "last_heap_mb"], root.GetProperty("gc_decode").EnumerateObject().Select(p => p.Name));
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
        // Host experts on the CPU (--routing cpu): with the learned router, a loaded host's slow CPU lane can send every
        // expert of a path's rounds to the other lane, leaving it no CPU lane to report (a CI failure).
        using var json = BenchJson("--new-tokens", "4", "--actors", "--routing", "cpu");
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
        // Without --actor-cpu-threads the actor rounds run the pool as serve does: as the direct path, cores − 1 (the
        // router and the pool actor share the pool's caller thread).
        Assert.Equal(Math.Max(1, Environment.ProcessorCount - 1), root.GetProperty("cpu_threads").GetInt32());
        Assert.Equal(Math.Max(1, Environment.ProcessorCount - 1), root.GetProperty("actor_cpu_threads").GetInt32());
        var memory = root.GetProperty("gpu_memory_actor_rounds_gib").EnumerateArray().ToArray();
        Assert.Equal(6, memory.Length); // before the rounds and after each
        Assert.All(memory, m => Assert.Equal(JsonValueKind.Null, m.ValueKind)); // CPU device
        // Each path's host-side stages per layer: every layer of the fixture has host experts, so each path decided and
        // ran a CPU lane in every layer; and each counted exactly its own run's layers (none of a warm-up's or of the
        // other path's): the prefill and 3 decode steps of 4 new tokens (the pipeline never queues past the last token).
        var stages = root.GetProperty("actor_path_ms_per_layer");
        int layers = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3", "config.json")).NumHiddenLayers;
        foreach (var path in new[] { "direct", "actors" })
        {
            var p = stages.GetProperty(path);
            foreach (var stage in new[] { "decide", "cpu_lane", "layer" }) Assert.True(p.GetProperty(stage).GetDouble() > 0, $"{path}.{stage}");
            Assert.True(p.GetProperty("layer").GetDouble() >= p.GetProperty("cpu_lane").GetDouble(), path);
            Assert.Equal(4 * layers, p.GetProperty("layers").GetDouble());
        }

        using var three = BenchJson("--new-tokens", "3", "--actors", "--actor-rounds", "3", "--actor-cpu-threads", "1");
        Assert.Equal(3, three.RootElement.GetProperty("decode_tok_s_actors_runs").GetArrayLength());
        Assert.Equal(1, three.RootElement.GetProperty("actor_cpu_threads").GetInt32());
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string[] Args(params string[] extra) => ["bench", "--model", model, "--device", "cpu", "--gpu-budget", "1MiB", "--prompt-tokens", "8", "--new-tokens", "3", .. extra,
            "--out", Path.Combine(_dir, "bad"), "--profile", Path.Combine(_dir, "profile.json")];
        var zero = CliHarness.Run(Args("--actors", "--actor-rounds", "0"));
        Assert.Equal(2, zero.ExitCode);
        Assert.Contains("--actor-rounds: 0 is not in 1..50", zero.Err);
        var alone = CliHarness.Run(Args("--actor-rounds", "3"));
        Assert.Equal(2, alone.ExitCode);
        Assert.Contains("--actor-rounds counts the rounds of --actors", alone.Err);
        var poolAlone = CliHarness.Run(Args("--actor-cpu-threads", "1"));
        Assert.Equal(2, poolAlone.ExitCode);
        Assert.Contains("--actor-cpu-threads sets the pool of the --actors rounds", poolAlone.Err);
        int pool = Math.Max(1, Environment.ProcessorCount - 1); // the direct rounds' default
        var tooMany = CliHarness.Run(Args("--actors", "--actor-cpu-threads", $"{pool + 1}"));
        Assert.Equal(2, tooMany.ExitCode);
        Assert.Contains($"--actor-cpu-threads: {pool + 1} is not in 1..{pool}", tooMany.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));

        // Without a budget the engine has no CPU pool: the rounds run as they are, with no participants to report.
        string outDir = Path.Combine(_dir, "nobudget");
        var whole = CliHarness.Run("bench", "--model", model, "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "3", "--actors", "--actor-rounds", "1",
            "--out", outDir, "--profile", Path.Combine(_dir, "profile.json"));
        Assert.True(whole.ExitCode == 0, $"exit {whole.ExitCode}: {whole.Err}");
        using var noPool = JsonDocument.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(outDir, "*.json"))));
        Assert.Equal(JsonValueKind.Null, noPool.RootElement.GetProperty("actor_cpu_threads").ValueKind);
        Assert.Equal(JsonValueKind.Null, noPool.RootElement.GetProperty("actor_path_ms_per_layer").ValueKind);
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

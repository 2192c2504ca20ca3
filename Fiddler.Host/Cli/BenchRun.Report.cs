using System.Text.Json;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

// The bench's report: the run's numbers as the JSON written to bench/results/ (and printed), with the breakdowns it
// carries (executor timeline, lane ceiling, host expert reads).
public static partial class BenchRun
{
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

    /// <summary>
    /// The kernel's regions in the decode windows; where some read experts in huge pages (<c>FIDDLER_HUGE_PAGES</c>), their
    /// rate apart from the others' (with <c>even</c>, both kinds in the same windows, layer after layer).
    /// </summary>
    public static Dictionary<string, double> KernelDecodeReport(long regions, double ms, long bytes, long hugeRegions, double hugeMs, long hugeBytes)
    {
        static double Rate(long b, double m) => m <= 0 ? 0 : Math.Round(b / (m / 1000) / 1e9, 1);
        var report = new Dictionary<string, double>
        {
            ["regions"] = regions, ["ms_per_region"] = Math.Round(ms / regions, 3), ["gb_s"] = Rate(bytes, ms),
        };
        if (hugeRegions > 0)
        {
            report["huge_page_regions"] = hugeRegions;
            report["huge_page_gb_s"] = Rate(hugeBytes, hugeMs);
            if (regions > hugeRegions)
            {
                report["small_page_regions"] = regions - hugeRegions;
                report["small_page_gb_s"] = Rate(bytes - hugeBytes, ms - hugeMs);
            }
        }
        return report;
    }

    /// <summary>The lane ceiling's numbers and what they mean for this run's decode.</summary>
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
            ["decode_pipeline"] = r.DecodePipeline,
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
            // The CPU kernel's settings as configured (prefetch bytes,level,next rows,item KB,row order; the A/Bs restore them).
            ["cpu_kernel"] = Fiddler.Kernels.Experts.CpuKernelSettings.Current.ToString(),
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
            // The host experts' read speeds measured at start (see HostReadScales): null when off or nothing could be timed;
            // "planned_by" whether the router used them (the host's memory uneven).
            ["read_scales"] = engine.ReadScales is { } rs ? new Dictionary<string, object>
            {
                ["experts"] = rs.Measured, ["median_gb_s"] = Math.Round(rs.ReferenceRate, 1), ["slowest"] = Math.Round(rs.Slowest, 3),
                ["slow_share"] = Math.Round(rs.SlowShare, 3), // experts at ≥ 1.2 × the median's read time
                ["planned_by"] = engine.Scheduler?.ReadScales is not null,
            } : null,
            ["warmup_prompt_tokens"] = r.WarmupPrompts,
            ["warmup_s"] = Math.Round(r.WarmupS, 3),
            ["card"] = card,
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["decode_tok_s_generator"] = r.GeneratorTokS is double g ? Math.Round(g, 3) : null,
            ["ab_balance"] = r.AbBalance is { } abb ? AbSides("on", abb.On, "off", abb.Off, "diff", abb.PairDiffPct, abb.MedianDiffPct,
                ("lane_balance_at_start", Math.Round(abb.BalanceAtStart, 3)),
                ("on_cpu_ended_last", Round(abb.On, x => x.CpuEndedLastShare, 3)), ("off_cpu_ended_last", Round(abb.Off, x => x.CpuEndedLastShare, 3)),
                ("on_handoff_host_ms", Round(abb.On, x => x.HandoffHostMs, 3)), ("off_handoff_host_ms", Round(abb.Off, x => x.HandoffHostMs, 3))) : null,
            // pair_diff_pct: fewer / full − 1
            ["ab_cpu_threads"] = r.AbCpuThreads is { } abt ? AbSides("full", abt.FullRuns, "fewer", abt.FewerRuns, "diff", abt.PairDiffPct, abt.MedianDiffPct,
                ("threads", new[] { abt.Full, abt.Fewer }),
                ("cpu_factor", new[] { Math.Round(abt.FullCpuFactor, 3), Math.Round(abt.FewerCpuFactor, 3) }),
                ("full_handoff_host_ms", Round(abt.FullRuns, x => x.HandoffHostMs, 3)), ("fewer_handoff_host_ms", Round(abt.FewerRuns, x => x.HandoffHostMs, 3))) : null,
            // pair_diff_pct: other / configured − 1; settings: prefetch bytes,level,next rows,item KB
            ["ab_kernel"] = r.AbKernel is { } abk ? AbSides("configured", abk.ConfiguredRuns, "other", abk.OtherRuns, "diff", abk.PairDiffPct, abk.MedianDiffPct,
                ("settings", new[] { abk.Configured.ToString(), abk.Other.ToString() }),
                ("cpu_factor", new[] { Math.Round(abk.ConfiguredCpuFactor, 3), Math.Round(abk.OtherCpuFactor, 3) }),
                ("configured_kernel_gb_s", Round(abk.ConfiguredRuns, x => x.KernelGBps, 1)), ("other_kernel_gb_s", Round(abk.OtherRuns, x => x.KernelGBps, 1))) : null,
            // pair_gain_pct: pipelined / stepped − 1
            ["ab_pipeline"] = r.AbPipeline is { } abp ? AbSides("pipelined", abp.PipelinedRuns, "stepped", abp.SteppedRuns, "gain", abp.PairGainPct, abp.MedianGainPct) : null,
            // pair_gain_pct: with / without − 1
            ["ab_read_scales"] = r.AbReadScales is { } abs ? AbSides("with", abs.WithRuns, "without", abs.WithoutRuns, "gain", abs.PairGainPct, abs.MedianGainPct,
                ("cpu_factor", new[] { Math.Round(abs.WithCpuFactor, 3), Math.Round(abs.WithoutCpuFactor, 3) }),
                ("with_kernel_gb_s", Round(abs.WithRuns, x => x.KernelGBps, 1)), ("without_kernel_gb_s", Round(abs.WithoutRuns, x => x.KernelGBps, 1)),
                ("forced", abs.Forced)) : null,
            ["decode_tok_s_actors"] = r.ActorsTokS is double a ? Math.Round(a, 3) : null,
            ["actor_overhead_pct"] = r.ActorOverheadPct is double pct ? Math.Round(pct, 2) : null,
            // Rounds alternate the order (direct first in even rounds, actors first in odd ones).
            ["decode_tok_s_generator_runs"] = r.GeneratorRuns?.Select(x => Math.Round(x, 3)).ToArray(),
            ["decode_tok_s_actors_runs"] = r.ActorRuns?.Select(x => Math.Round(x, 3)).ToArray(),
            // GPU memory in use before the first round and after each (one direct and one actor decode per round).
            ["gpu_memory_actor_rounds_gib"] = r.ActorRoundsMemoryGiB,
            ["actor_cpu_threads"] = r.ActorCpuParticipants, // the CPU pool's participants in the actor rounds (cpu_threads: the direct path's)
            // Where the actors cost: each path's host-side stages per layer, ms (medians over the rounds).
            ["actor_path_ms_per_layer"] = r.ActorPathStages is { } ps ? new Dictionary<string, object>
            {
                ["direct"] = Stages(ps.Direct), ["actors"] = Stages(ps.Actors),
            } : null,
            ["lane_ceiling"] = r.Ceiling is { } c ? LaneCeilingReport(c, r) : null,
            // --ceiling-windows: decode windows, each followed by the lane-ceiling probe (is the run's speed the host's?).
            ["ceiling_windows"] = r.CeilingRounds is { } cw ? CeilingWindowsReport(cw) : null,
            ["baseline_seed_decode_tok_s"] = baseline,
            ["speedup_vs_seed"] = baseline is double bs && bs > 0 ? Math.Round(r.DecodeTokS / bs, 2) : null,
        };
    }

    /// <summary>One path's stages of <c>--actors</c> (<see cref="PathStages"/>) in the JSON: ms per layer, and the layers timed.</summary>
    private static Dictionary<string, double> Stages(PathStages p) => new()
    {
        ["decide"] = Math.Round(p.DecideMs, 4), ["until_cpu_lane_starts"] = Math.Round(p.LaneStartMs, 4), ["cpu_lane"] = Math.Round(p.CpuLaneMs, 4),
        ["handoff_host"] = Math.Round(p.HandoffHostMs, 4), ["layer"] = Math.Round(p.LayerMs, 4), ["layers"] = p.Layers,
    };

    /// <summary>An in-process A/B's JSON: the pairs, each side's tok/s per window (<c>{a}_tok_s</c>, <c>{b}_tok_s</c>), each
    /// pair's and the median percentage (<c>pair_{pct}_pct</c>, <c>median_{pct}_pct</c>), then the A/B's own fields.</summary>
    private static Dictionary<string, object> AbSides(string a, WindowStats[] aRuns, string b, WindowStats[] bRuns, string pct, double[] pairPct,
        double medianPct, params (string Key, object Value)[] extra)
    {
        var d = new Dictionary<string, object>
        {
            ["pairs"] = aRuns.Length,
            [$"{a}_tok_s"] = Round(aRuns, x => x.TokS, 3),
            [$"{b}_tok_s"] = Round(bRuns, x => x.TokS, 3),
            [$"pair_{pct}_pct"] = pairPct,
            [$"median_{pct}_pct"] = Math.Round(medianPct, 2),
        };
        foreach (var (key, value) in extra) d.Add(key, value);
        return d;
    }

    private static double[] Round(WindowStats[] runs, Func<WindowStats, double> field, int digits) =>
        runs.Select(x => Math.Round(field(x), digits)).ToArray();
}

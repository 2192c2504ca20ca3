namespace Fiddler.Actors.Scheduling;

/// <summary>
/// Where one expert's tokens run. (Not named <c>Placement</c>: inside <c>Fiddler.Actors.*</c> that name resolves to the
/// <c>Fiddler.Actors.Placement</c> namespace before any using directive, which would break every actor that routes.)
/// </summary>
public enum ExpertPlacement
{
    /// <summary>Resident on the GPU: compute there.</summary>
    Gpu,
    /// <summary>Not resident: compute on the CPU from pinned memory; activations make a round trip.</summary>
    Cpu,
    /// <summary>Not resident: copy the weights into a GPU staging slot, then compute on the GPU.</summary>
    Transfer,
    /// <summary>Not resident: the CPU computes a share of the intermediate rows while the rest is streamed and computed
    /// on the GPU (the balancing expert between the two lanes).</summary>
    Split,
}

/// <summary>Which decisions the router may make.</summary>
public enum RoutingMode
{
    /// <summary>Minimize the layer's finish time over CPU and transfer for every non-resident expert.</summary>
    Auto,
    /// <summary>No GPU lane for misses (the seed's rule; also a host without a copy engine): every miss on the CPU.</summary>
    CpuOnly,
    /// <summary>Every miss streamed to the GPU (forced-transfer plans for correctness tests and benchmarks).</summary>
    TransferOnly,
}

/// <summary>Router settings.</summary>
/// <param name="Mode">Which decisions are allowed.</param>
/// <param name="StagingSlots">GPU staging buffers for streamed experts: a transfer waits for a free one, and a slot is
/// freed when the GPU has finished computing the expert in it.</param>
/// <param name="ExactSearchLimit">Exact search over all 2^n CPU/transfer splits up to this many misses; greedy above.</param>
/// <param name="SplitExperts">In <see cref="RoutingMode.Auto"/>, also divide one miss's intermediate rows between the CPU
/// and a transfer when that balances the two lanes (a whole expert is too coarse: at decode two CPU misses take ~5.8 ms
/// and one transfer 6.45 ms, so no whole-expert choice uses both lanes).</param>
/// <param name="MinSplitGainMs">A split must finish the layer at least this much sooner than the best whole-expert plan
/// (it costs a second launch and a 2-D copy that the latency models do not see).</param>
/// <param name="CpuContention">CPU expert time multiplier while weights stream over PCIe in the same layer: both read host
/// DRAM (NOTES.md: CPU 99 → 84.5 GB/s with a concurrent H2D copy).</param>
/// <param name="AdaptCpuModel">Learn, from observed CPU lanes, how much slower the CPU runs in the engine than calibrated,
/// separately for layers with and without weight transfers (an exponential moving average of observed / calibrated with
/// rate <paramref name="AdaptRate"/>). Calibration measures one kernel alone; in the engine the GPU thread, the copy
/// engine's DRAM reads and the pool's wake-ups slow it (seen on the H100 host: ×1.19 alone, ×1.48 beside transfers).</param>
/// <param name="BalanceLastLane">For decode-sized layers with both lanes: learn, from which lane ended last, a balance
/// on the planned CPU lane so that the CPU lane ends last in the share of layers that minimizes the layer's expected
/// finish (see <see cref="ExpertRouter.LastLaneTarget"/>). The moving averages above balance the lanes' means; where the
/// CPU lane's time is skewed (seen on the H100 host: the device lane ended last in 77-81 % of gated decode layers), the
/// device then waits at the end of most layers. Off here (a bare router plans by its models); the engine turns it on
/// (<c>EngineOptions.BalanceLastLane</c>): 6 of 11 alternating pairs won at 24 GiB on H100 hosts, median +0.9 % decode
/// (within the noise), the hand-off between layers a third shorter.</param>
/// <param name="BalanceRate">The balance's step per observed layer (multiplicative).</param>
/// <param name="BatchAdaptRate">The rate of those moving averages for batch layers (more than 4 tokens for some expert:
/// prefill, beams). A request's prefill gives the batch factors only one sample per layer (a 512-token prompt: 32), each
/// a long lane (20-50 ms), so they learn faster than the decode factors, which see 32 samples per token. The factors
/// still differ by batch size (seen on the H100 host at 24 GiB: contended 1.1-2.2 after prompts of 16-512 tokens): the
/// first prompt of a size runs on what other sizes taught (the device lane waited 6-15 ms per layer for the CPU lane at
/// 128 tokens), one right after a prompt of its size on its own (2-4 ms).</param>
public sealed record RouterOptions(RoutingMode Mode = RoutingMode.Auto, int StagingSlots = 2, int ExactSearchLimit = 16,
    bool SplitExperts = true, double MinSplitGainMs = 0.1, double CpuContention = 1.25, bool AdaptCpuModel = true, double AdaptRate = 0.05,
    bool BalanceLastLane = false, double BalanceRate = 0.02, double BatchAdaptRate = 0.25)
{
    public static RouterOptions Default { get; } = new();
}

/// <summary>
/// One chosen expert of a layer: its id, how many tokens chose it, and whether its weights are on the GPU.
/// <paramref name="CpuScale"/>: how much longer than the calibrated expert its weights take to read on this host (its
/// host memory's speed, see <see cref="HostReadScales"/>; 1 where not measured); applies where the CPU kernel is bound by
/// memory (decode-sized batches).
/// </summary>
public readonly record struct ExpertLoad(int Expert, int Tokens, bool Resident, double CpuScale = 1);

/// <summary>The router's decision for one expert, with its predicted timeline (ms from the start of the layer).</summary>
/// <param name="PredictedMs">The expert's own work: GPU compute; CPU compute + activation round trip; or transfer + GPU compute.</param>
/// <param name="StartMs">When its first resource starts: compute for Gpu/Cpu, the weight copy for Transfer.</param>
/// <param name="ComputeStartMs">When its compute starts (for Transfer: after the weights arrived and the GPU is free).</param>
/// <param name="FinishMs">When its result is ready.</param>
/// <param name="CpuViaTorch">For Cpu: the oneDNN path is predicted faster than the SIMD kernel at this batch.</param>
/// <param name="CpuShare">The share of the intermediate rows computed on the CPU: 1 for Cpu, 0 for Gpu/Transfer, in
/// between for Split (whose timeline fields describe its transferred part; PredictedMs is the later of its two parts).</param>
public readonly record struct ExpertDecision(int Expert, int Tokens, ExpertPlacement Placement, double PredictedMs,
    double StartMs, double ComputeStartMs, double FinishMs, bool CpuViaTorch = false, double CpuShare = 0);

/// <summary>The decisions for one layer (in input order) and the predicted lane finish times.</summary>
/// <param name="CpuLaneMs">When the CPU lane (CPU experts back to back) finishes.</param>
/// <param name="GpuLaneMs">When the GPU lane (resident computes, transfers and their computes) finishes.</param>
/// <param name="Exact">Whether the split is the best of every split (exact search, or no miss to place); false: greedy, above <see cref="RouterOptions.ExactSearchLimit"/> misses.</param>
public sealed record LayerPlan(IReadOnlyList<ExpertDecision> Decisions, double CpuLaneMs, double GpuLaneMs, bool Exact)
{
    /// <summary>The CPU slowdown factor the plan was made with (calibrated CPU times × this = the CPU lane's times).</summary>
    public double CpuFactor { get; init; } = 1;

    /// <summary>The weight-copy slowdown factor the plan was made with (calibrated transfer time × this).</summary>
    public double TransferFactor { get; init; } = 1;

    /// <summary>Whether weights stream in this layer (its CPU lane competes with the copy engine for DRAM).</summary>
    public bool HasTransfers => Decisions.Any(d => d.Placement is ExpertPlacement.Transfer or ExpertPlacement.Split);

    /// <summary>Whether the CPU computes anything in this layer.</summary>
    public bool HasCpuWork => Decisions.Any(d => d.Placement is ExpertPlacement.Cpu or ExpertPlacement.Split);

    /// <summary>The layer's predicted finish: both lanes run at the same time.</summary>
    public double MakespanMs => Math.Max(CpuLaneMs, GpuLaneMs);

    public int Count(ExpertPlacement placement) => Decisions.Count(d => d.Placement == placement);

    /// <summary>The decision for <paramref name="expert"/>.</summary>
    public ExpertDecision For(int expert) => Decisions.First(d => d.Expert == expert);
}

/// <summary>What the engine observed for one expert of an executed plan, the same quantity as <see cref="ExpertDecision.PredictedMs"/>.</summary>
public readonly record struct ExpertTiming(int Expert, double ObservedMs);

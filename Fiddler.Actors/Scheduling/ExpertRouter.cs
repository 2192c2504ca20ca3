using System.Numerics;

namespace Fiddler.Actors.Scheduling;

/// <summary>
/// Decides, per layer, where each chosen expert runs, then accounts observed times against the prediction
/// (decide → run → account, as nano-vllm's scheduler). Resident experts run on the GPU. Each miss runs either on the
/// CPU or is streamed to the GPU; the CPU lane and the PCIe/GPU lane work at the same time, so the split that
/// minimizes max(CPU lane, GPU lane) is chosen. At decode this is the Fiddler paper's rule (misses on the CPU) plus
/// streaming some misses when that finishes the layer sooner.
/// </summary>
public sealed partial class ExpertRouter
{
    // Predictions within a nanosecond are equal; ties then go to fewer transfers (less PCIe traffic, fewer slots).
    private const double Eps = 1e-6;
    private readonly Lock _gate = new();

    public ExpertRouter(HardwareProfile profile, RouterOptions? options = null)
    {
        Profile = profile ?? throw new ArgumentNullException(nameof(profile));
        Options = options ?? RouterOptions.Default;
        if (Options.Mode != RoutingMode.CpuOnly && Options.StagingSlots < 1)
            throw new ArgumentException($"staging slots must be >= 1 to stream experts, got {Options.StagingSlots}; use RoutingMode.CpuOnly for no GPU lane");
        if (Options.ExactSearchLimit is < 0 or > 24)
            throw new ArgumentException($"exact search limit must be in 0..24 (2^n splits), got {Options.ExactSearchLimit}");
        if (!(Options.CpuContention is >= 1 and <= 10))
            throw new ArgumentException($"CPU contention factor must be in 1..10, got {Options.CpuContention}");
        if (!(Options.MinSplitGainMs >= 0)) throw new ArgumentException($"minimum split gain must be >= 0 ms, got {Options.MinSplitGainMs}");
        if (!(Options.AdaptRate is > 0 and <= 1)) throw new ArgumentException($"adapt rate must be in (0, 1], got {Options.AdaptRate}");
        if (!(Options.BatchAdaptRate is > 0 and <= 1)) throw new ArgumentException($"batch adapt rate must be in (0, 1], got {Options.BatchAdaptRate}");
        if (!(Options.BalanceRate is > 0 and <= 0.5)) throw new ArgumentException($"balance rate must be in (0, 0.5], got {Options.BalanceRate}");
        Array.Fill(_contendedFactor, Options.CpuContention);
        _balanceOn = Options.BalanceLastLane;
    }

    private volatile bool _balanceOn;

    /// <summary>
    /// Whether the lane-order balance is applied and learned now (starts as <see cref="RouterOptions.BalanceLastLane"/>).
    /// Switching it keeps the learned multiplier, so an A/B within one process (<c>fiddler bench --ab-balance</c>)
    /// compares the same placement, memory and learned speeds with and without it. Switch it between forwards (no
    /// layer in flight): a plan decided under one setting and accounted under the other does not teach the balance.
    /// </summary>
    public bool BalanceLastLane { get => _balanceOn; set => _balanceOn = value; }

    public HardwareProfile Profile { get; }
    public RouterOptions Options { get; }

    /// <summary>Chooses a placement for every expert of one layer (decisions in input order).</summary>
    public LayerPlan Decide(IReadOnlyList<ExpertLoad> experts)
    {
        var misses = Misses(experts);
        int n = misses.Length;
        // Once per plan: the factors a regime reads may change between two reads (its first lesson lands meanwhile).
        int regime = RegimeOf(experts);
        bool exact = Options.Mode == RoutingMode.Auto && n <= Options.ExactSearchLimit;
        bool[] transfer = new bool[n];
        if (Options.Mode == RoutingMode.TransferOnly) Array.Fill(transfer, true);
        else if (Options.Mode == RoutingMode.Auto && n > 0)
            transfer = exact ? ExactSplit(experts, misses, regime) : GreedySplit(experts, misses, regime);
        var plan = Build(experts, misses, transfer, exact, regime);
        if (Options.Mode == RoutingMode.Auto && Options.SplitExperts && n > 0
            && BestSplit(experts, misses, transfer, plan.MakespanMs - Options.MinSplitGainMs, regime) is { } split)
            plan = Build(experts, misses, transfer, exact, regime, split);
        return plan;
    }

    /// <summary>The predicted plan for a forced split: misses for which <paramref name="transfer"/> is true are streamed.</summary>
    public LayerPlan Evaluate(IReadOnlyList<ExpertLoad> experts, Func<ExpertLoad, bool> transfer)
    {
        var misses = Misses(experts);
        return Build(experts, misses, misses.Select(m => transfer(experts[m.Index])).ToArray(), exact: false, RegimeOf(experts));
    }

    private readonly record struct Miss(int Index, int Expert, double CpuMs, double GpuMs);

    /// <summary>
    /// The misses with their costs, in copy order: longest GPU compute first (then lower id). With one transfer time
    /// for every expert this is Johnson's rule for a two-stage flow shop, so the GPU overlaps the most with later copies.
    /// </summary>
    private Miss[] Misses(IReadOnlyList<ExpertLoad> experts)
    {
        ArgumentNullException.ThrowIfNull(experts);
        var seen = new HashSet<int>();
        var misses = new List<Miss>();
        for (int i = 0; i < experts.Count; i++)
        {
            var e = experts[i];
            if (e.Tokens < 1) throw new ArgumentException($"expert {e.Expert} has {e.Tokens} tokens; route only chosen experts");
            if (!seen.Add(e.Expert)) throw new ArgumentException($"expert {e.Expert} appears twice in one layer");
            if (!e.Resident)
                misses.Add(new(i, e.Expert, Profile.CpuMs(e.Tokens) * MemoryScale(e) + Profile.ActivationRoundTrip.Ms(e.Tokens), Profile.GpuExpert.Ms(e.Tokens)));
        }
        misses.Sort((a, b) => a.GpuMs != b.GpuMs ? b.GpuMs.CompareTo(a.GpuMs) : a.Expert.CompareTo(b.Expert));
        return misses.ToArray();
    }

    /// <summary>
    /// The expert's memory-speed scale where the CPU kernel streams its weights (decode-sized batches: the calibrated
    /// time is a memory read); larger batches are bound by compute, and keep the calibrated time.
    /// </summary>
    private static double MemoryScale(ExpertLoad e)
    {
        if (!(e.CpuScale > 0) || double.IsInfinity(e.CpuScale))
            throw new ArgumentException($"expert {e.Expert}: CPU scale {e.CpuScale} is not a positive number");
        return e.Tokens <= LearnedMaxTokens ? e.CpuScale : 1;
    }

    private double[] ResidentGpuMs(IReadOnlyList<ExpertLoad> experts) =>
        experts.Where(e => e.Resident).OrderBy(e => e.Expert).Select(e => Profile.GpuExpert.Ms(e.Tokens)).ToArray();

    /// <summary>
    /// Every split, in mask order; ties keep the one with fewer transfers, then the shorter CPU lane (the slower-to-read
    /// expert streams: a split of it, tried next, can then take CPU time off the layer), then the first found.
    /// </summary>
    private bool[] ExactSplit(IReadOnlyList<ExpertLoad> experts, Miss[] misses, int regime)
    {
        int n = misses.Length;
        double[] resident = ResidentGpuMs(experts);
        Span<double> staged = stackalloc double[n];
        double best = double.PositiveInfinity, bestCpu = double.PositiveInfinity;
        int bestMask = 0, bestCount = int.MaxValue;
        // A split whose CPU lane cannot be shorter than the best makespan so far cannot win. The lane is the CPU time
        // times a factor that learning may bring below 1 (a host faster than its calibration), so bound it by the
        // smaller of the two factors, not by the raw time.
        double laneFloor = Math.Min(CpuFactor(false, regime), CpuFactor(true, regime));
        for (int mask = 0; mask < 1 << n; mask++)
        {
            double cpu = 0;
            int m = 0;
            for (int i = 0; i < n; i++)
                if ((mask & (1 << i)) != 0) staged[m++] = misses[i].GpuMs;
                else cpu += misses[i].CpuMs;
            if (cpu * laneFloor > best + Eps) continue;
            double makespan = Math.Max(CpuLane(cpu, m > 0, regime), GpuLane.Simulate(resident, staged[..m], TransferMs(regime, cpuWork: m < n), Options.StagingSlots));
            int count = BitOperations.PopCount((uint)mask);
            if (makespan < best - Eps || (makespan <= best + Eps && (count < bestCount || (count == bestCount && cpu < bestCpu - Eps))))
                (best, bestMask, bestCount, bestCpu) = (makespan, mask, count, cpu);
        }
        return Enumerable.Range(0, n).Select(i => (bestMask & (1 << i)) != 0).ToArray();
    }

    /// <summary>Longest CPU time first, each onto the lane that would finish sooner (CPU on a tie).</summary>
    private bool[] GreedySplit(IReadOnlyList<ExpertLoad> experts, Miss[] misses, int regime)
    {
        double[] resident = ResidentGpuMs(experts);
        bool[] transfer = new bool[misses.Length];
        var staged = new List<double>(misses.Length);
        double cpu = 0;
        foreach (int i in Enumerable.Range(0, misses.Length).OrderByDescending(i => misses[i].CpuMs).ThenBy(i => misses[i].Expert))
        {
            transfer[i] = true;
            staged.Clear();
            for (int j = 0; j < misses.Length; j++) if (transfer[j]) staged.Add(misses[j].GpuMs);
            double gpuIf = GpuLane.Simulate(resident, staged.ToArray(), TransferMs(regime, cpuWork: cpu > 0), Options.StagingSlots);
            transfer[i] = gpuIf < CpuLane(cpu + misses[i].CpuMs, true, regime) - Eps;
            if (!transfer[i]) cpu += misses[i].CpuMs;
        }
        return transfer;
    }

    /// <summary>The CPU lane's time: slower while weights stream in the same layer (both read host DRAM).</summary>
    private double CpuLane(double cpuMs, bool anyTransfer, int regime) => cpuMs * CpuFactor(anyTransfer, regime);

    /// <summary>
    /// Which learned factors a layer uses, by its largest per-expert batch: decode-sized layers (≤ 4 tokens per expert:
    /// the SIMD kernel, memory-bound) and three batch sizes (prefill, beams: ≤ 16 tokens, where the calibrated profile
    /// moves from the SIMD kernel to libtorch's oneDNN/AMX linear, at ~14 tokens on the H100 host; ≤ 64; more, with more
    /// compute per byte) slow down differently beside the copies (measured on the
    /// H100 host: the CPU lane beside copies at 1.1-2.2× calibrated depending on the prompt's size), so each learns its
    /// own. Without learning (<see cref="Calibrated"/>) the configured contention applies.
    /// </summary>
    private const int Calibrated = -1, DecodeRegime = 0;

    /// <summary>The largest per-expert batch of each regime, in order (<see cref="DecodeRegime"/> first).</summary>
    private static readonly int[] RegimeMaxTokens = [4, 16, 64, int.MaxValue];

    private static int Regimes => RegimeMaxTokens.Length;

    private static int LearnedMaxTokens => RegimeMaxTokens[DecodeRegime];

    private int RegimeOf(IReadOnlyList<ExpertLoad> experts) =>
        !Options.AdaptCpuModel ? Calibrated : LearnedRegime(RegimeOfTokens(experts.Select(e => e.Tokens)));

    private static int RegimeOfTokens(IEnumerable<int> tokens)
    {
        int max = tokens.DefaultIfEmpty(0).Max();
        return Array.FindIndex(RegimeMaxTokens, m => max <= m);
    }

    /// <summary>
    /// The regime whose factors a plan reads: a batch size that has not learned yet borrows the nearest batch size that has
    /// (the smaller first), as one shared batch factor did; decode and learned sizes read their own.
    /// </summary>
    private int LearnedRegime(int regime)
    {
        if (regime <= DecodeRegime || Volatile.Read(ref _samples[regime]) > 0) return regime;
        for (int d = 1; d < Regimes; d++)
            foreach (int r in (int[])[regime - d, regime + d])
                if (r > DecodeRegime && r < Regimes && Volatile.Read(ref _samples[r]) > 0) return r;
        return regime;
    }

    private double CpuFactor(bool anyTransfer, int regime) =>
        regime == Calibrated ? (anyTransfer ? Options.CpuContention : 1)
        : anyTransfer ? Volatile.Read(ref _contendedFactor[regime]) * (regime == DecodeRegime && _balanceOn ? Volatile.Read(ref _balance) : 1)
        : Volatile.Read(ref _calmFactor[regime]);

    /// <summary>
    /// One expert's weight copy: calibrated, times the regime's learned factor where the CPU lane runs beside the copies
    /// (where it is learned: both read host DRAM). Alone, copies run at calibrated speed.
    /// </summary>
    private double TransferMs(int regime, bool cpuWork) => Profile.TransferMs * TransferFactorFor(regime, cpuWork);

    private double TransferFactorFor(int regime, bool cpuWork) =>
        regime != Calibrated && cpuWork ? Volatile.Read(ref _transferFactor[regime]) : 1;

    private readonly record struct SplitChoice(int Miss, double GpuShare);

    /// <summary>
    /// The best single-expert split, if it beats <paramref name="target"/>: each miss in turn leaves its lane and is
    /// divided, its transferred share t copied last; the CPU lane falls and the GPU lane grows with t, so bisection finds
    /// where they meet. Others keep the whole-expert decision.
    /// </summary>
    private SplitChoice? BestSplit(IReadOnlyList<ExpertLoad> experts, Miss[] misses, bool[] transfer, double target, int regime)
    {
        double[] resident = ResidentGpuMs(experts);
        SplitChoice? best = null;
        double bestMs = target;
        var staged = new double[misses.Length];
        for (int s = 0; s < misses.Length; s++)
        {
            double cpuOthers = 0;
            int m = 0;
            for (int i = 0; i < misses.Length; i++)
                if (i == s) continue;
                else if (transfer[i]) staged[m++] = misses[i].GpuMs;
                else cpuOthers += misses[i].CpuMs;
            var (cpuPart, roundTrip) = CpuParts(misses[s], experts[misses[s].Index].Tokens);
            double Cpu(double t) => CpuLane(cpuOthers + (1 - t) * cpuPart + roundTrip, true, regime);
            double Gpu(double t)
            {
                staged[m] = t * misses[s].GpuMs;
                return GpuLane.Simulate(resident, staged.AsSpan(0, m + 1), TransferMs(regime, cpuWork: true), Options.StagingSlots, lastTransferMs: t * TransferMs(regime, cpuWork: true));
            }
            double lo = 0, hi = 1;
            for (int k = 0; k < 40; k++)
            {
                double mid = (lo + hi) / 2;
                if (Cpu(mid) > Gpu(mid)) lo = mid; else hi = mid;
            }
            double share = hi, ms = Math.Max(Cpu(share), Gpu(share));
            // Nearly all on one side is the whole-expert plan with extra overhead.
            if (share is < 0.02 or > 0.98) continue;
            if (ms < bestMs - Eps) (best, bestMs) = (new SplitChoice(s, share), ms);
        }
        return best;
    }

    /// <summary>A miss's CPU time as (compute, which scales with the rows computed; activation round trip, which does not).</summary>
    private (double Compute, double RoundTrip) CpuParts(Miss miss, int tokens)
    {
        double roundTrip = Profile.ActivationRoundTrip.Ms(tokens);
        return (Math.Max(0, miss.CpuMs - roundTrip), roundTrip);
    }

    private LayerPlan Build(IReadOnlyList<ExpertLoad> experts, Miss[] misses, bool[] transfer, bool exact, int regime, SplitChoice? split = null)
    {
        var decisions = new ExpertDecision[experts.Count];
        var residents = experts.Select((e, i) => (e, i)).Where(x => x.e.Resident).OrderBy(x => x.e.Expert).ToArray();
        double[] residentMs = residents.Select(x => Profile.GpuExpert.Ms(x.e.Tokens)).ToArray();
        int splitMiss = split?.Miss ?? -1;
        double t = split?.GpuShare ?? 0;
        Miss[] staged = misses.Where((_, i) => transfer[i] && i != splitMiss).ToArray();
        // The split's transferred part is copied last.
        double[] stagedMs = staged.Select(m => m.GpuMs).Concat(split is null ? [] : [t * misses[splitMiss].GpuMs]).ToArray();
        int copies = stagedMs.Length;
        bool cpuWork = split is not null || misses.Where((_, i) => !transfer[i]).Any();
        double transferFactor = TransferFactorFor(regime, cpuWork), transferMs = Profile.TransferMs * transferFactor;
        var (residentStart, copyStart, computeStart) = (new double[residents.Length], new double[copies], new double[copies]);
        double gpu = GpuLane.Simulate(residentMs, stagedMs, transferMs, Options.StagingSlots, residentStart, copyStart, computeStart,
            split is null ? double.NaN : t * transferMs);

        for (int r = 0; r < residents.Length; r++)
        {
            var (e, i) = residents[r];
            decisions[i] = new(e.Expert, e.Tokens, ExpertPlacement.Gpu, residentMs[r], residentStart[r], residentStart[r], residentStart[r] + residentMs[r]);
        }
        for (int s = 0; s < staged.Length; s++)
        {
            var m = staged[s];
            double own = transferMs + m.GpuMs;
            decisions[m.Index] = new(m.Expert, experts[m.Index].Tokens, ExpertPlacement.Transfer, own, copyStart[s], computeStart[s], computeStart[s] + m.GpuMs);
        }
        double factor = CpuFactor(copies > 0, regime);
        double cpu = 0;
        foreach (var m in misses.Where((_, i) => !transfer[i] && i != splitMiss).OrderBy(m => m.Expert))
        {
            int tokens = experts[m.Index].Tokens;
            double ms = m.CpuMs * factor;
            decisions[m.Index] = new(m.Expert, tokens, ExpertPlacement.Cpu, ms, cpu, cpu, cpu + ms, Profile.CpuPrefersTorch(tokens), CpuShare: 1);
            cpu += ms;
        }
        if (split is not null)
        {
            var m = misses[splitMiss];
            int tokens = experts[m.Index].Tokens;
            var (cpuPart, roundTrip) = CpuParts(m, tokens);
            double cpuMs = ((1 - t) * cpuPart + roundTrip) * factor, gpuMs = t * m.GpuMs;
            int last = copies - 1;
            decisions[m.Index] = new(m.Expert, tokens, ExpertPlacement.Split, Math.Max(cpuMs, t * transferMs + gpuMs),
                copyStart[last], computeStart[last], Math.Max(cpu + cpuMs, computeStart[last] + gpuMs), Profile.CpuPrefersTorch(tokens), CpuShare: 1 - t);
            cpu += cpuMs;
        }
        return new LayerPlan(decisions, cpu, gpu, exact) { CpuFactor = factor, TransferFactor = transferFactor };
    }
}

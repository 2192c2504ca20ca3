using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Fiddler.Kernels.Experts;

/// <summary>Instruction-set paths of <see cref="CpuExpertKernel"/>.</summary>
public enum CpuIsa
{
    Scalar,
    Avx2,
    Avx512,
}

/// <summary>
/// The Fiddler CPU expert: y = w2 · (silu(w1·x) ⊙ (w3·x)) for a few tokens, straight from weights in CPU memory,
/// fp32 throughout: HF MixtralBlockSparseTop2MLP's math on the stored weights, without bf16 rounding between the ops.
/// Decode is memory-bound (one weight byte feeds ≤ 16 multiply-adds), so the design is about reading each weight once:
/// phase 1 splits the intermediate rows of w1 and w3 across threads (each item streams w1 and w3 rows side by side and
/// writes silu(g)·u), a completion barrier, then phase 2 splits the hidden rows of w2. By default an item's four streams
/// each walk a contiguous run of its rows (<see cref="CpuKernelTuning.SpreadRows"/>), so a prefetch along one row runs on into
/// the next and no stream restarts cold at every row. All tokens of an expert are
/// computed from the same weight load (<see cref="RowDots"/>). Scratch (activations in kernel order, the intermediate
/// h) belongs to the pool.
/// </summary>
public static unsafe class CpuExpertKernel
{
    [ThreadStatic] private static CpuIsa? t_forceIsa;

    /// <summary>The best path this CPU supports.</summary>
    public static CpuIsa BestIsa => Avx512Ops.IsSupported && Vector512.IsHardwareAccelerated ? CpuIsa.Avx512
        : Avx2Ops.IsSupported ? CpuIsa.Avx2 : CpuIsa.Scalar;

    /// <summary>
    /// For tests and benchmarks: the path calls from this thread use (null: <see cref="BestIsa"/>). Thread-static, so
    /// concurrent tests don't see each other's choice. Asking for an ISA the CPU lacks throws at the next call.
    /// </summary>
    public static CpuIsa? ForceIsa
    {
        get => t_forceIsa;
        set => t_forceIsa = value is { } isa && !Enum.IsDefined(isa)
            ? throw new ArgumentOutOfRangeException(nameof(value), isa, "not an instruction set the kernel has") : value;
    }

    /// <summary>One expert: <paramref name="x"/> <c>[tokens, Hidden]</c> fp32 in, <paramref name="y"/> <c>[tokens, Hidden]</c> fp32 out (overwritten).</summary>
    public static void SwiGlu(CpuWorkerPool pool, float* x, int tokens, in ExpertWeights w, float* y)
    {
        var job = new ExpertJob(w, x, y, tokens);
        SwiGluMany(pool, new ReadOnlySpan<ExpertJob>(in job));
    }

    private static long s_regions, s_regionTicks, s_regionBytes;
    private static long s_hugeRegions, s_hugeTicks, s_hugeBytes;

    /// <summary>
    /// Since the last <see cref="ResetStats"/>: parallel regions run (<see cref="SwiGluMany"/> calls), the time spent in
    /// them (from the first job's planning to the region's end) and the weight bytes they read. Bytes over time is the
    /// kernel's own rate inside the engine, apart from what a CPU lane does around it.
    /// </summary>
    public static (long Regions, double Ms, long WeightBytes) Stats =>
        (Interlocked.Read(ref s_regions), Interlocked.Read(ref s_regionTicks) * 1000.0 / System.Diagnostics.Stopwatch.Frequency, Interlocked.Read(ref s_regionBytes));

    /// <summary>
    /// The part of <see cref="Stats"/> from regions whose first expert's weights lie in memory advised into huge pages
    /// (<see cref="Runtime.HugePages.IsAdvised"/>); with <c>FIDDLER_HUGE_PAGES=even</c> a run's regions split between
    /// both kinds layer by layer, so the two rates compare within one run.
    /// </summary>
    public static (long Regions, double Ms, long WeightBytes) HugePageStats =>
        (Interlocked.Read(ref s_hugeRegions), Interlocked.Read(ref s_hugeTicks) * 1000.0 / System.Diagnostics.Stopwatch.Frequency, Interlocked.Read(ref s_hugeBytes));

    public static void ResetStats()
    {
        Interlocked.Exchange(ref s_regions, 0);
        Interlocked.Exchange(ref s_regionTicks, 0);
        Interlocked.Exchange(ref s_regionBytes, 0);
        Interlocked.Exchange(ref s_hugeRegions, 0);
        Interlocked.Exchange(ref s_hugeTicks, 0);
        Interlocked.Exchange(ref s_hugeBytes, 0);
    }

    /// <summary>Several experts (a layer's CPU share) in one parallel region: all gate/up rows, barrier, all down rows.</summary>
    public static void SwiGluMany(CpuWorkerPool pool, ReadOnlySpan<ExpertJob> jobs)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        long bytes = 0;
        bool huge = false, first = true;
        foreach (var j in jobs)
        {
            if (j.Tokens == 0) continue;
            bytes += j.Weights.Bytes;
            if (first && Runtime.HugePages.AnyAdvised) huge = Runtime.HugePages.IsAdvised((nint)j.Weights.W1);
            first = false;
        }
        try { SwiGluRegion(pool, jobs); }
        finally
        {
            long ticks = System.Diagnostics.Stopwatch.GetTimestamp() - start;
            Interlocked.Increment(ref s_regions);
            Interlocked.Add(ref s_regionTicks, ticks);
            Interlocked.Add(ref s_regionBytes, bytes);
            if (huge)
            {
                Interlocked.Increment(ref s_hugeRegions);
                Interlocked.Add(ref s_hugeTicks, ticks);
                Interlocked.Add(ref s_hugeBytes, bytes);
            }
        }
    }

    private static void SwiGluRegion(CpuWorkerPool pool, ReadOnlySpan<ExpertJob> jobs)
    {
        ArgumentNullException.ThrowIfNull(pool);
        pool.ThrowIfInsideRegion("a CPU expert kernel call");
        CpuIsa isa = ForceIsa ?? BestIsa;
        if (isa == CpuIsa.Avx512 && !Avx512Ops.IsSupported || isa == CpuIsa.Avx2 && !Avx2Ops.IsSupported)
            throw new PlatformNotSupportedException($"{isa} is not supported on this CPU");
        int width = isa switch { CpuIsa.Avx512 => 16, CpuIsa.Avx2 => 8, _ => 1 };
        lock (pool.CallLock)
        {
            var plans = new JobPlan[jobs.Length];
            long scratchFloats = 0;
            int lastWithWork = -1;
            for (int j = 0; j < jobs.Length; j++)
            {
                Validate(jobs[j], j);
                plans[j] = JobPlan.Create(jobs[j], width, pool.Concurrency, ref scratchFloats);
                if (jobs[j].Tokens > 0) lastWithWork = j;
            }
            // Both phases end in the last job with tokens: its last rows go out as small items (CpuKernelTuning.TailItemBytes).
            if (lastWithWork >= 0) plans[lastWithWork].CutTail(CpuKernelTuning.TailItemBytes, pool.ActiveConcurrency);
            float* scratch = (float*)pool.Scratch((nuint)scratchFloats * sizeof(float));
            int gateItems = 0, downItems = 0;
            for (int j = 0; j < plans.Length; j++)
            {
                ref var p = ref plans[j];
                p.Xp = scratch + p.XpOffset;
                p.H = scratch + p.HOffset;
                p.GateItemStart = gateItems;
                p.DownItemStart = downItems;
                gateItems += p.GateItems;
                downItems += p.DownItems;
                for (int t = 0; t < p.Tokens; t++) ToKernelOrder(jobs[j].X + (long)t * p.Hidden, p.Xp + t * p.LdX, p.Hidden, p.Width);
            }
            pool.ParallelFor(
                gateItems, i => RunItem(isa, ref Find(plans, i, gate: true), i, gate: true),
                downItems, i => RunItem(isa, ref Find(plans, i, gate: false), i, gate: false),
                grain: 1);
        }
    }

    private static void Validate(in ExpertJob job, int index)
    {
        var w = job.Weights;
        if (w.Hidden <= 0 || w.Intermediate <= 0) throw new ArgumentException($"job {index}: hidden and intermediate sizes must be positive");
        if (w.W1 == null || w.W2 == null || w.W3 == null) throw new ArgumentException($"job {index}: null weight pointer");
        if (w.W2Stride < w.Intermediate) throw new ArgumentException($"job {index}: w2 stride {w.W2Stride} < intermediate {w.Intermediate}");
        if (job.Tokens < 0) throw new ArgumentException($"job {index}: negative token count");
        if (job.Tokens > 0 && (job.X == null || job.Y == null)) throw new ArgumentException($"job {index}: null x or y");
        if (!Enum.IsDefined(w.Type)) throw new ArgumentException($"job {index}: unknown weight type {w.Type}");
    }

    private static ref JobPlan Find(JobPlan[] plans, int item, bool gate)
    {
        int j = plans.Length - 1;
        while (j > 0 && (gate ? plans[j].GateItemStart : plans[j].DownItemStart) > item) j--;
        return ref plans[j];
    }

    private static void RunItem(CpuIsa isa, ref JobPlan p, int item, bool gate)
    {
        switch (isa, p.Type)
        {
            case (CpuIsa.Avx512, WeightType.BF16): Item<Avx512Ops, Vector512<float>, Bf16Format>(ref p, item, gate); break;
            case (CpuIsa.Avx512, WeightType.F16): Item<Avx512Ops, Vector512<float>, F16Format>(ref p, item, gate); break;
            case (CpuIsa.Avx512, WeightType.F32): Item<Avx512Ops, Vector512<float>, F32Format>(ref p, item, gate); break;
            case (CpuIsa.Avx2, WeightType.BF16): Item<Avx2Ops, Vector256<float>, Bf16Format>(ref p, item, gate); break;
            case (CpuIsa.Avx2, WeightType.F16): Item<Avx2Ops, Vector256<float>, F16Format>(ref p, item, gate); break;
            case (CpuIsa.Avx2, WeightType.F32): Item<Avx2Ops, Vector256<float>, F32Format>(ref p, item, gate); break;
            case (CpuIsa.Scalar, WeightType.BF16): Item<ScalarOps, float, Bf16Format>(ref p, item, gate); break;
            case (CpuIsa.Scalar, WeightType.F16): Item<ScalarOps, float, F16Format>(ref p, item, gate); break;
            default: Item<ScalarOps, float, F32Format>(ref p, item, gate); break;
        }
    }

    private static void Item<TOps, TVec, TW>(ref JobPlan p, int item, bool gate)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat
    {
        if (gate) GateUp<TOps, TVec, TW>(ref p, item - p.GateItemStart);
        else Down<TOps, TVec, TW>(ref p, item - p.DownItemStart);
    }

    // Two rows of w1 and w3 at a time → h[t, i], h[t, i1] = silu(w1·x)·(w3·x), stored in kernel order for phase 2.
    [SkipLocalsInit, MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GateUp<TOps, TVec, TW>(ref JobPlan p, int item)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat
    {
        float* r = stackalloc float[4 * RowDots.MaxTokens];
        nint rowBytes = (nint)p.Hidden * TW.ElementBytes;
        var (begin, end) = p.Gate.Rows(item, p.Intermediate);
        // Adjacent rows: rows i, i+1 side by side, so two of the four streams start cold at every pair.
        // Spread (the default): rows i and i + half side by side, each stream walking its half of the item contiguously.
        var (half, stride, last) = Streams(begin, end, 2, CpuKernelTuning.SpreadRows);
        nint nextPair = CpuKernelTuning.NextRowsPrefetch ? stride * rowBytes : 0; // each stream's next row
        for (int i = begin; i < last; i += stride)
        {
            int i1 = Math.Min(i + half, end - 1); // past the end (odd tail): compute row i1 again, same value
            byte* g0 = p.W1 + i * rowBytes, u0 = p.W3 + i * rowBytes, g1 = p.W1 + i1 * rowBytes, u1 = p.W3 + i1 * rowBytes;
            int h0 = KernelIndex(i, p.Intermediate, p.Width), h1 = KernelIndex(i1, p.Intermediate, p.Width);
            for (int t0 = 0; t0 < p.Tokens; t0 += RowDots.MaxTokens)
            {
                int n = Math.Min(RowDots.MaxTokens, p.Tokens - t0);
                RowDots.Quad<TOps, TVec, TW>(g0, u0, g1, u1, p.Hidden, p.Xp + t0 * p.LdX, p.LdX, n, r, t0 == 0 && i + stride < last ? nextPair : 0);
                for (int t = 0; t < n; t++)
                {
                    float* h = p.H + (t0 + t) * p.LdH;
                    h[h0] = Silu(r[t]) * r[n + t];
                    h[h1] = Silu(r[2 * n + t]) * r[3 * n + t];
                }
            }
        }
    }

    // Four rows of w2 at a time → y[t, row].
    [SkipLocalsInit, MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Down<TOps, TVec, TW>(ref JobPlan p, int item)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat
    {
        float* r = stackalloc float[4 * RowDots.MaxTokens];
        nint rowBytes = (nint)p.W2Stride * TW.ElementBytes;
        var (begin, end) = p.Down.Rows(item, p.Hidden);
        // Adjacent rows: rows j..j+3 side by side. Spread (the default): rows j, j+q, j+2q, j+3q, each stream walking its
        // quarter of the item contiguously (where w2's rows are whole: a split's rows are its first columns only).
        var (q, stride, stop) = Streams(begin, end, 4, CpuKernelTuning.SpreadRows);
        nint nextQuad = CpuKernelTuning.NextRowsPrefetch ? stride * rowBytes : 0; // each stream's next row
        for (int j = begin; j < stop; j += stride)
        {
            // Row j + k·q for k < 4, those at or past the end replaced by the last one in range (computed again, not kept).
            int rows = Math.Min(4, (end - 1 - j) / q + 1);
            byte* w = p.W2 + j * rowBytes;
            byte* last = w + (rows - 1) * q * rowBytes;
            byte* r1 = rows > 1 ? w + q * rowBytes : last, r2 = rows > 2 ? w + 2 * q * rowBytes : last, r3 = last;
            for (int t0 = 0; t0 < p.Tokens; t0 += RowDots.MaxTokens)
            {
                int n = Math.Min(RowDots.MaxTokens, p.Tokens - t0);
                RowDots.Quad<TOps, TVec, TW>(w, r1, r2, r3, p.Intermediate, p.H + t0 * p.LdH, p.LdH, n, r, t0 == 0 && j + stride < stop ? nextQuad : 0);
                for (int t = 0; t < n; t++)
                {
                    float* y = p.Y + (long)(t0 + t) * p.Hidden + j;
                    for (int k = 0; k < rows; k++) y[k * q] = r[k * n + t];
                }
            }
        }
    }

    /// <summary>
    /// How <paramref name="k"/> side-by-side streams walk an item's rows [begin, end): the loop runs from begin to
    /// <c>Stop</c> by <c>Stride</c>, and stream s reads row + s·<c>Run</c>. Spread: each stream its own contiguous run of
    /// ⌈rows/k⌉ (Stride 1). Adjacent: k neighbouring rows at a time (Run 1, Stride k). The switch is read once per item by
    /// the caller, so the bounds agree.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (int Run, int Stride, int Stop) Streams(int begin, int end, int k, bool spread)
    {
        int run = (end - begin + k - 1) / k;
        return spread ? (run, 1, begin + run) : (1, k, end);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Silu(float g) => g / (1f + MathF.Exp(-g));

    /// <summary>
    /// Where element i of a length-k activation row sits in kernel order for 16-bit weights with vectors of w lanes:
    /// within each block of 2w, evens first then odds (the order <see cref="ISimd{TVec}.LoadBf16Pairs"/> yields);
    /// the tail past the last whole block stays in place. Identity for w = 1.
    /// </summary>
    internal static int KernelIndex(int i, int k, int w)
    {
        int mask = 2 * w - 1; // 2w is a power of two
        if (w <= 1 || i >= k - (k & mask)) return i;
        int j = i & mask;
        return i - j + (j & 1) * w + (j >> 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ToKernelOrder(float* src, float* dst, int k, int w)
    {
        int block = 2 * w, kVec = w <= 1 ? 0 : k - k % block;
        for (int b = 0; b < kVec; b += block)
            for (int j = 0; j < w; j++)
            {
                dst[b + j] = src[b + 2 * j];
                dst[b + w + j] = src[b + 2 * j + 1];
            }
        for (int i = kVec; i < k; i++) dst[i] = src[i];
    }

    private struct JobPlan
    {
        public byte* W1, W3, W2;
        public float* Y, Xp, H;
        public int Hidden, Intermediate, W2Stride, Tokens, Width, LdX, LdH, ElementBytes;
        public WeightType Type;
        public long XpOffset, HOffset;
        public ItemSplit Gate, Down;
        public int GateItemStart, DownItemStart;
        public readonly int GateItems => Gate.Items;
        public readonly int DownItems => Down.Items;

        public static JobPlan Create(in ExpertJob job, int width, int threads, ref long scratchFloats)
        {
            var w = job.Weights;
            // Activations in kernel order only when the weights deinterleave (16-bit); fp32 weights load in order.
            int orderWidth = w.Type == WeightType.F32 ? 1 : width;
            var p = new JobPlan
            {
                W1 = (byte*)w.W1, W3 = (byte*)w.W3, W2 = (byte*)w.W2, Y = job.Y,
                Hidden = w.Hidden, Intermediate = w.Intermediate, W2Stride = w.W2Stride, Tokens = job.Tokens, Width = orderWidth, Type = w.Type,
                ElementBytes = w.ElementBytes,
                // 64-byte aligned rows, one cache line longer than a multiple of 64 so that the rows of several tokens don't
                // all map to the same L1 sets (4K aliasing: Mixtral's 4096 and 14336 floats are multiples of 4 KB).
                LdX = RoundUp(w.Hidden, 16) + 16, LdH = RoundUp(w.Intermediate, 16) + 16,
            };
            p.XpOffset = scratchFloats;
            scratchFloats += (long)p.LdX * job.Tokens;
            p.HOffset = scratchFloats;
            scratchFloats += (long)p.LdH * job.Tokens;
            // Items of ~ItemBytes (CpuKernelTuning; with the default a phase's last items cost ~1 % of a decode region on the
            // H100 host, tails of 60-84 µs against 29-78 µs with 128 KB items, which the longer runs more than repay), but at least 8
            // per thread when the expert is small (tests, small models).
            long itemBytes = CpuKernelTuning.ItemBytes;
            long gateRowBytes = 2L * w.Hidden * w.ElementBytes, downRowBytes = (long)w.Intermediate * w.ElementBytes;
            int gateRows = RoundUp((int)Math.Clamp(Math.Min(itemBytes / gateRowBytes, w.Intermediate / (8L * threads)), 2, int.MaxValue / 2), 2);
            int downRows = RoundUp((int)Math.Clamp(Math.Min(itemBytes / downRowBytes, w.Hidden / (8L * threads)), 4, int.MaxValue / 4), 4);
            p.Gate = ItemSplit.Uniform(job.Tokens == 0 ? 0 : w.Intermediate, gateRows);
            p.Down = ItemSplit.Uniform(job.Tokens == 0 ? 0 : w.Hidden, downRows);
            return p;
        }

        /// <summary>This job ends both phases: the rows one full item per participant would cover go out as items of
        /// ~<paramref name="tailBytes"/> (0, or not below the item size: no change).</summary>
        public void CutTail(int tailBytes, int participants)
        {
            if (tailBytes <= 0) return;
            Gate = Gate.WithTail(Intermediate, participants, Math.Max(2, RoundUp((int)(tailBytes / (2L * Hidden * ElementBytes)), 2)));
            Down = Down.WithTail(Hidden, participants, Math.Max(4, RoundUp((int)(tailBytes / ((long)Intermediate * ElementBytes)), 4)));
        }

        private static int RoundUp(int v, int m) => (v + m - 1) / m * m;
    }

    /// <summary>
    /// How one phase of one job cuts its rows into work items: <see cref="Big"/> items of <see cref="BigRows"/> rows,
    /// then items of <see cref="SmallRows"/> rows to the end (the phase's tail).
    /// </summary>
    internal readonly record struct ItemSplit(int Big, int BigRows, int SmallRows, int Items)
    {
        public static ItemSplit Uniform(int rows, int itemRows)
        {
            int items = (rows + itemRows - 1) / itemRows;
            return new(items, itemRows, itemRows, items);
        }

        /// <summary>The rows of <paramref name="participants"/> full items or more (less than one more) at the end, cut into
        /// items of <paramref name="smallRows"/>; unchanged when those are not smaller.</summary>
        public ItemSplit WithTail(int rows, int participants, int smallRows)
        {
            if (Items == 0 || smallRows >= BigRows) return this;
            int big = Math.Max(0, (rows - participants * BigRows) / BigRows);
            int tailRows = rows - big * BigRows;
            return new(big, BigRows, smallRows, big + (tailRows + smallRows - 1) / smallRows);
        }

        /// <summary>Rows [begin, end) of item <paramref name="item"/>.</summary>
        public (int Begin, int End) Rows(int item, int rows)
        {
            int begin = item < Big ? item * BigRows : Big * BigRows + (item - Big) * SmallRows;
            return (begin, Math.Min(begin + (item < Big ? BigRows : SmallRows), rows));
        }
    }
}

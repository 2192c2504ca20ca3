using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// The inner loops: dot products of four weight rows with up to <see cref="MaxTokens"/> activation rows, fp32
/// accumulation. Every weight vector loaded is used for all tokens of a tile (4 tokens with AVX-512, 2 with AVX2), and
/// K is walked in blocks of <see cref="KBlock"/> so the four rows' block stays in L1 while further token tiles pass over
/// it: memory sees each weight byte once, whatever the token count.
/// Activations are in the weight format's order (even/odd within each 2·Width block for 16-bit weights, see
/// <see cref="ISimd{TVec}.LoadBf16Pairs"/>), natural order in the tail past the last whole block.
/// Every loop here is compiled fully optimised at first call (AggressiveOptimization): tier-0 code of these loops runs
/// 10-50× slower, and a decode step calls them only a few hundred times, too few for tiering to catch up early.
/// </summary>
internal static unsafe class RowDots
{
    public const int MaxTokens = 16;

    /// <summary>
    /// Elements per K block: the four rows' block (4 KB of bf16) stays in L1 while all token tiles pass over it (16 tokens
    /// of fp32 activations are 32 KB). On the Xeon host 512 beat 1024 and 2048 for 8 and 16 tokens (one run each: 79 vs 61 and 70 GB/s at 8).
    /// </summary>
    public const int KBlock = 512;

    /// <summary>
    /// result[r·n + t] = Σ_k row_r[k]·x_t[k] for rows r0..r3 and activation rows x_t = x + t·ldx, t &lt; n. Where
    /// <paramref name="next"/> is not 0, each row's block is also prefetched into L2 that many bytes further on (the same
    /// columns of the caller's next row group; <see cref="CpuKernelTuning.NextRowsPrefetch"/>).
    /// </summary>
    public static void Quad<TOps, TVec, TW>(byte* r0, byte* r1, byte* r2, byte* r3, int k, float* x, nint ldx, int n, float* result, nint next = 0)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat
    {
        // The prefetch policy becomes type arguments, so the loops carry no per-step switch (a cached expert runs ~15 %
        // slower with one at 1 token).
        if (next != 0) QuadAt<TOps, TVec, TW, NextRowsOn>(r0, r1, r2, r3, k, x, ldx, n, result, next);
        else QuadAt<TOps, TVec, TW, NextRowsOff>(r0, r1, r2, r3, k, x, ldx, n, result, 0);
    }

    private static void QuadAt<TOps, TVec, TW, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, int k, float* x, nint ldx, int n, float* result, nint next)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat where TNext : struct, IFlag
    {
        switch (CpuKernelTuning.PrefetchLevel)
        {
            case PrefetchLevel.L1: QuadCore<TOps, TVec, TW, PrefetchT0, TNext>(r0, r1, r2, r3, k, x, ldx, n, result, next); break;
            case PrefetchLevel.L2: QuadCore<TOps, TVec, TW, PrefetchT1, TNext>(r0, r1, r2, r3, k, x, ldx, n, result, next); break;
            case PrefetchLevel.L3: QuadCore<TOps, TVec, TW, PrefetchT2, TNext>(r0, r1, r2, r3, k, x, ldx, n, result, next); break;
            default: QuadCore<TOps, TVec, TW, PrefetchNta, TNext>(r0, r1, r2, r3, k, x, ldx, n, result, next); break;
        }
    }

    [SkipLocalsInit, MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void QuadCore<TOps, TVec, TW, TAhead, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, int k, float* x, nint ldx, int n, float* result, nint next)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat where TAhead : struct, IPrefetchHint where TNext : struct, IFlag
    {
        TVec* acc = stackalloc TVec[4 * MaxTokens]; // [tile][row][token in tile]
        for (int i = 0; i < 4 * n; i++) acc[i] = TOps.Zero;
        int step = 2 * TOps.Width, kVec = k - k % step;
        for (int k0 = 0; k0 < kVec; k0 += KBlock)
        {
            nint steps = Math.Min(KBlock, kVec - k0) / step;
            nint w = (nint)k0 * TW.ElementBytes;
            for (int t = 0, tile; t < n; t += tile)
            {
                tile = TileSize<TOps, TVec>(n - t);
                float* xt = x + t * ldx + k0;
                // The next row group's block is asked for once, by the first tile over this block.
                nint ahead = t == 0 ? next : 0;
                if (tile == 4) Tile4<TOps, TVec, TW, TAhead, TNext>(r0 + w, r1 + w, r2 + w, r3 + w, xt, ldx, steps, ahead, acc + 4 * t);
                else if (tile == 2) Tile2<TOps, TVec, TW, TAhead, TNext>(r0 + w, r1 + w, r2 + w, r3 + w, xt, ldx, steps, ahead, acc + 4 * t);
                else Tile1<TOps, TVec, TW, TAhead, TNext>(r0 + w, r1 + w, r2 + w, r3 + w, xt, steps, ahead, acc + 4 * t);
            }
        }
        for (int t = 0, tile; t < n; t += tile)
        {
            tile = TileSize<TOps, TVec>(n - t);
            for (int j = 0; j < tile; j++)
            {
                float* xt = x + (t + j) * ldx;
                TVec* a = acc + 4 * t + j;
                result[t + j] = TOps.Sum(a[0]) + Tail<TW>(r0, xt, kVec, k);
                result[n + t + j] = TOps.Sum(a[tile]) + Tail<TW>(r1, xt, kVec, k);
                result[2 * n + t + j] = TOps.Sum(a[2 * tile]) + Tail<TW>(r2, xt, kVec, k);
                result[3 * n + t + j] = TOps.Sum(a[3 * tile]) + Tail<TW>(r3, xt, kVec, k);
            }
        }
    }

    // 4 rows × 4 tokens = 16 accumulators + 8 activation + 2 weight vectors: fits AVX-512's 32 registers, not AVX2's 16.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int TileSize<TOps, TVec>(int left) where TOps : ISimd<TVec> where TVec : unmanaged =>
        left >= 4 && TOps.Width >= 16 ? 4 : left >= 2 ? 2 : 1;

    /// <summary>One x86 prefetch hint (<see cref="PrefetchLevel"/>), as a type argument.</summary>
    internal interface IPrefetchHint { static abstract void At(byte* p); }
    private struct PrefetchT0 : IPrefetchHint { public static void At(byte* p) => Sse.Prefetch0(p); }
    private struct PrefetchT1 : IPrefetchHint { public static void At(byte* p) => Sse.Prefetch1(p); }
    private struct PrefetchT2 : IPrefetchHint { public static void At(byte* p) => Sse.Prefetch2(p); }
    private struct PrefetchNta : IPrefetchHint { public static void At(byte* p) => Sse.PrefetchNonTemporal(p); }

    /// <summary>A switch fixed at compile time (a type argument).</summary>
    internal interface IFlag { static abstract bool On { get; } }
    private struct NextRowsOn : IFlag { public static bool On => true; }
    private struct NextRowsOff : IFlag { public static bool On => false; }

    /// <summary>
    /// One step's prefetches for the four rows: <paramref name="pf"/> bytes ahead along each row at the hint's level, and
    /// (where the policy asks and <paramref name="next"/> is set) the same columns of the next row group into L2.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchRows<TAhead, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, nint pf, nint next)
        where TAhead : struct, IPrefetchHint where TNext : struct, IFlag
    {
        if (pf > 0) { TAhead.At(r0 + pf); TAhead.At(r1 + pf); TAhead.At(r2 + pf); TAhead.At(r3 + pf); }
        if (TNext.On && next != 0) { Sse.Prefetch1(r0 + next); Sse.Prefetch1(r1 + next); Sse.Prefetch1(r2 + next); Sse.Prefetch1(r3 + next); }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail<TW>(byte* row, float* x, int from, int to) where TW : IWeightFormat
    {
        float sum = 0;
        for (int k = from; k < to; k++) sum += TW.LoadScalar(row, k) * x[k];
        return sum;
    }

    // One token: two accumulators per row (even and odd halves) so each row has two independent FMA chains.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile1<TOps, TVec, TW, TAhead, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, float* x, nint steps, nint next, TVec* acc)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat where TAhead : struct, IPrefetchHint where TNext : struct, IFlag
    {
        TVec a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
        TVec b0 = TOps.Zero, b1 = TOps.Zero, b2 = TOps.Zero, b3 = TOps.Zero;
        nint wStep = 2 * TOps.Width * TW.ElementBytes;
        nint pf = CpuKernelTuning.PrefetchBytes; // software prefetch distance along each row (the hardware streamers alone fall short)
        for (nint s = 0; s < steps; s++)
        {
            if (Sse.IsSupported && TOps.Width > 1) PrefetchRows<TAhead, TNext>(r0, r1, r2, r3, pf, next);
            TVec xe = TOps.Load(x), xo = TOps.Load(x + TOps.Width);
            TW.Load<TOps, TVec>(r0, out var e, out var o);
            a0 = TOps.MultiplyAdd(e, xe, a0); b0 = TOps.MultiplyAdd(o, xo, b0);
            TW.Load<TOps, TVec>(r1, out e, out o);
            a1 = TOps.MultiplyAdd(e, xe, a1); b1 = TOps.MultiplyAdd(o, xo, b1);
            TW.Load<TOps, TVec>(r2, out e, out o);
            a2 = TOps.MultiplyAdd(e, xe, a2); b2 = TOps.MultiplyAdd(o, xo, b2);
            TW.Load<TOps, TVec>(r3, out e, out o);
            a3 = TOps.MultiplyAdd(e, xe, a3); b3 = TOps.MultiplyAdd(o, xo, b3);
            x += 2 * TOps.Width; r0 += wStep; r1 += wStep; r2 += wStep; r3 += wStep;
        }
        acc[0] = TOps.Add(a0, b0); acc[1] = TOps.Add(a1, b1);
        acc[2] = TOps.Add(a2, b2); acc[3] = TOps.Add(a3, b3);
    }

    // Even halves for every token of a row, then odd halves: two FMAs into one accumulator back to back are fused into one
    // expression by the JIT, which then emits the 213 form plus two register copies per pair.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile2<TOps, TVec, TW, TAhead, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, float* x, nint ldx, nint steps, nint next, TVec* acc)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat where TAhead : struct, IPrefetchHint where TNext : struct, IFlag
    {
        TVec a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3], a20 = acc[4], a21 = acc[5], a30 = acc[6], a31 = acc[7];
        float* x1 = x + ldx;
        nint wStep = 2 * TOps.Width * TW.ElementBytes;
        nint pf = CpuKernelTuning.PrefetchBytes; // software prefetch distance along each row (the hardware streamers alone fall short)
        for (nint s = 0; s < steps; s++)
        {
            if (Sse.IsSupported && TOps.Width > 1) PrefetchRows<TAhead, TNext>(r0, r1, r2, r3, pf, next);
            TVec x0e = TOps.Load(x), x0o = TOps.Load(x + TOps.Width), x1e = TOps.Load(x1), x1o = TOps.Load(x1 + TOps.Width);
            TW.Load<TOps, TVec>(r0, out var e, out var o);
            a00 = TOps.MultiplyAdd(e, x0e, a00); a01 = TOps.MultiplyAdd(e, x1e, a01); a00 = TOps.MultiplyAdd(o, x0o, a00); a01 = TOps.MultiplyAdd(o, x1o, a01);
            TW.Load<TOps, TVec>(r1, out e, out o);
            a10 = TOps.MultiplyAdd(e, x0e, a10); a11 = TOps.MultiplyAdd(e, x1e, a11); a10 = TOps.MultiplyAdd(o, x0o, a10); a11 = TOps.MultiplyAdd(o, x1o, a11);
            TW.Load<TOps, TVec>(r2, out e, out o);
            a20 = TOps.MultiplyAdd(e, x0e, a20); a21 = TOps.MultiplyAdd(e, x1e, a21); a20 = TOps.MultiplyAdd(o, x0o, a20); a21 = TOps.MultiplyAdd(o, x1o, a21);
            TW.Load<TOps, TVec>(r3, out e, out o);
            a30 = TOps.MultiplyAdd(e, x0e, a30); a31 = TOps.MultiplyAdd(e, x1e, a31); a30 = TOps.MultiplyAdd(o, x0o, a30); a31 = TOps.MultiplyAdd(o, x1o, a31);
            x += 2 * TOps.Width; x1 += 2 * TOps.Width; r0 += wStep; r1 += wStep; r2 += wStep; r3 += wStep;
        }
        acc[0] = a00; acc[1] = a01; acc[2] = a10; acc[3] = a11; acc[4] = a20; acc[5] = a21; acc[6] = a30; acc[7] = a31;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4<TOps, TVec, TW, TAhead, TNext>(byte* r0, byte* r1, byte* r2, byte* r3, float* x, nint ldx, nint steps, nint next, TVec* acc)
        where TOps : ISimd<TVec> where TVec : unmanaged where TW : IWeightFormat where TAhead : struct, IPrefetchHint where TNext : struct, IFlag
    {
        TVec a00 = acc[0], a01 = acc[1], a02 = acc[2], a03 = acc[3], a10 = acc[4], a11 = acc[5], a12 = acc[6], a13 = acc[7];
        TVec a20 = acc[8], a21 = acc[9], a22 = acc[10], a23 = acc[11], a30 = acc[12], a31 = acc[13], a32 = acc[14], a33 = acc[15];
        float* x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        nint wStep = 2 * TOps.Width * TW.ElementBytes;
        nint pf = CpuKernelTuning.PrefetchBytes; // software prefetch distance along each row (the hardware streamers alone fall short)
        for (nint s = 0; s < steps; s++)
        {
            if (Sse.IsSupported && TOps.Width > 1) PrefetchRows<TAhead, TNext>(r0, r1, r2, r3, pf, next);
            TVec x0e = TOps.Load(x), x0o = TOps.Load(x + TOps.Width), x1e = TOps.Load(x1), x1o = TOps.Load(x1 + TOps.Width);
            TVec x2e = TOps.Load(x2), x2o = TOps.Load(x2 + TOps.Width), x3e = TOps.Load(x3), x3o = TOps.Load(x3 + TOps.Width);
            TW.Load<TOps, TVec>(r0, out var e, out var o);
            a00 = TOps.MultiplyAdd(e, x0e, a00); a01 = TOps.MultiplyAdd(e, x1e, a01); a02 = TOps.MultiplyAdd(e, x2e, a02); a03 = TOps.MultiplyAdd(e, x3e, a03);
            a00 = TOps.MultiplyAdd(o, x0o, a00); a01 = TOps.MultiplyAdd(o, x1o, a01); a02 = TOps.MultiplyAdd(o, x2o, a02); a03 = TOps.MultiplyAdd(o, x3o, a03);
            TW.Load<TOps, TVec>(r1, out e, out o);
            a10 = TOps.MultiplyAdd(e, x0e, a10); a11 = TOps.MultiplyAdd(e, x1e, a11); a12 = TOps.MultiplyAdd(e, x2e, a12); a13 = TOps.MultiplyAdd(e, x3e, a13);
            a10 = TOps.MultiplyAdd(o, x0o, a10); a11 = TOps.MultiplyAdd(o, x1o, a11); a12 = TOps.MultiplyAdd(o, x2o, a12); a13 = TOps.MultiplyAdd(o, x3o, a13);
            TW.Load<TOps, TVec>(r2, out e, out o);
            a20 = TOps.MultiplyAdd(e, x0e, a20); a21 = TOps.MultiplyAdd(e, x1e, a21); a22 = TOps.MultiplyAdd(e, x2e, a22); a23 = TOps.MultiplyAdd(e, x3e, a23);
            a20 = TOps.MultiplyAdd(o, x0o, a20); a21 = TOps.MultiplyAdd(o, x1o, a21); a22 = TOps.MultiplyAdd(o, x2o, a22); a23 = TOps.MultiplyAdd(o, x3o, a23);
            TW.Load<TOps, TVec>(r3, out e, out o);
            a30 = TOps.MultiplyAdd(e, x0e, a30); a31 = TOps.MultiplyAdd(e, x1e, a31); a32 = TOps.MultiplyAdd(e, x2e, a32); a33 = TOps.MultiplyAdd(e, x3e, a33);
            a30 = TOps.MultiplyAdd(o, x0o, a30); a31 = TOps.MultiplyAdd(o, x1o, a31); a32 = TOps.MultiplyAdd(o, x2o, a32); a33 = TOps.MultiplyAdd(o, x3o, a33);
            int adv = 2 * TOps.Width;
            x += adv; x1 += adv; x2 += adv; x3 += adv; r0 += wStep; r1 += wStep; r2 += wStep; r3 += wStep;
        }
        acc[0] = a00; acc[1] = a01; acc[2] = a02; acc[3] = a03; acc[4] = a10; acc[5] = a11; acc[6] = a12; acc[7] = a13;
        acc[8] = a20; acc[9] = a21; acc[10] = a22; acc[11] = a23; acc[12] = a30; acc[13] = a31; acc[14] = a32; acc[15] = a33;
    }
}

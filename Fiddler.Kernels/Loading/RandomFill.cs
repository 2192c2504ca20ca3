using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Loading;

/// <summary>
/// Fast, deterministic, roughly normal random fill of raw CPU memory (bf16, fp16, fp32), for full-size dummy weights:
/// 70+ GB of pinned memory in seconds where <c>normal_</c> takes minutes.
/// </summary>
/// <remarks>
/// The value at global element index <c>i</c> depends only on (seed, i), never on how a tensor is split into calls,
/// on the thread count or on the SIMD width, so a tensor can be filled in parts (<c>startIndex</c>) and every
/// machine writes the same bytes. The stream:
/// <list type="bullet">
/// <item>elements are grouped in seed blocks of <see cref="SeedBlockElements"/>; block <c>b</c> seeds SplitMix64 with
///   <c>Mix(Mix(seed) ^ b)</c> (Mix = SplitMix64's finaliser), whose next 32 outputs are the states s0..s3 of 8
///   xoshiro256** lanes (lane l takes outputs 4l..4l+3);</item>
/// <item>each step advances all 8 lanes once: 8 × 64 bits = 16 little-endian 32-bit words, word 2l the low half of
///   lane l; element k of the block is word k % 16 of step k / 16;</item>
/// <item>a word becomes (sum of its 4 bytes − 510) · std / √21845 in fp32 (Irwin–Hall of four 8-bit uniforms:
///   mean 0, standard deviation std, tails cut at ±3.46σ, excess kurtosis −0.3), rounded to nearest-even for
///   bf16/fp16. The bf16 and fp16 fills are the fp32 fill, rounded.</item>
/// </list>
/// Bytes are summed rather than mapped through Box–Muller because the sum is a handful of integer SIMD ops per 16
/// values; the distribution only needs to look like trained weights to the kernels being benchmarked.
/// </remarks>
public static class RandomFill
{
    /// <summary>Elements per independently seeded block; a fill starting mid-block skips at most this many values.</summary>
    public const int SeedBlockElements = 1 << 16;

    /// <summary>Bytes written per parallel work item (aligned to global element indices).</summary>
    public const int WorkItemBytes = 4 << 20;

    private const int Lanes = 8;
    private const int PairElements = 32;   // two xoshiro steps: 2 × 8 lanes × 2 words
    private const int ByteSumMean = 510;   // 4 × 255 / 2
    private const double ByteSumStd = 147.80054127; // √(4 × (256² − 1) / 12) = √21845

    public static void FillNormalBf16(IntPtr dst, long count, ulong seed, float std, long startIndex = 0, int maxThreads = 0) =>
        FillNormal(dst, count, ScalarType.BFloat16, seed, std, startIndex, maxThreads);

    public static void FillNormalFloat16(IntPtr dst, long count, ulong seed, float std, long startIndex = 0, int maxThreads = 0) =>
        FillNormal(dst, count, ScalarType.Float16, seed, std, startIndex, maxThreads);

    public static void FillNormalFloat32(IntPtr dst, long count, ulong seed, float std, long startIndex = 0, int maxThreads = 0) =>
        FillNormal(dst, count, ScalarType.Float32, seed, std, startIndex, maxThreads);

    /// <summary>
    /// Writes elements <c>startIndex .. startIndex + count</c> of the stream for <paramref name="seed"/> to
    /// <paramref name="dst"/> (which receives element <c>startIndex</c> first).
    /// </summary>
    /// <param name="maxThreads">0: <see cref="Environment.ProcessorCount"/>; 1: the calling thread only.</param>
    public static void FillNormal(IntPtr dst, long count, ScalarType dtype, ulong seed, float std, long startIndex = 0, int maxThreads = 0)
    {
        int elementSize = dtype switch
        {
            ScalarType.BFloat16 or ScalarType.Float16 => 2,
            ScalarType.Float32 => 4,
            _ => throw new ArgumentException($"RandomFill supports bfloat16, float16 and float32, not {dtype}.", nameof(dtype)),
        };
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfNegative(startIndex);
        ArgumentOutOfRangeException.ThrowIfNegative(maxThreads);
        if (!float.IsFinite(std) || std < 0) throw new ArgumentOutOfRangeException(nameof(std), std, "std must be finite and ≥ 0.");
        if (count == 0) return;
        if (dst == IntPtr.Zero) throw new ArgumentNullException(nameof(dst));
        if (long.MaxValue - startIndex < count) throw new ArgumentOutOfRangeException(nameof(count), "startIndex + count overflows.");

        float scale = (float)(std / ByteSumStd);
        long workElements = WorkItemBytes / elementSize;  // a multiple of SeedBlockElements
        long end = startIndex + count;
        long firstItem = startIndex / workElements;
        long items = (end - 1) / workElements - firstItem + 1;

        void RunItem(long item)
        {
            long from = Math.Max(startIndex, (firstItem + item) * workElements);
            long to = Math.Min(end, (firstItem + item + 1) * workElements);
            FillRange(dst + (nint)((from - startIndex) * elementSize), from, to, dtype, seed, scale);
        }

        int threads = maxThreads == 0 ? Environment.ProcessorCount : maxThreads;
        if (items == 1 || threads == 1)
        {
            for (long i = 0; i < items; i++) RunItem(i);
            return;
        }
        Parallel.For(0L, items, new ParallelOptions { MaxDegreeOfParallelism = threads }, RunItem);
    }

    /// <summary>Fills a contiguous CPU tensor (bf16, fp16 or fp32) with elements <c>startIndex ..</c> of the stream.</summary>
    public static void FillNormal(Tensor t, ulong seed, float std, long startIndex = 0, int maxThreads = 0)
    {
        if (t.device_type != DeviceType.CPU) throw new ArgumentException($"RandomFill writes CPU memory; the tensor is on {t.device}.", nameof(t));
        if (!t.is_contiguous()) throw new ArgumentException("RandomFill needs a contiguous tensor.", nameof(t));
        if (t.numel() == 0) return;
        FillNormal(TensorMemory.DataPtr(t), t.numel(), t.dtype, seed, std, startIndex, maxThreads);
    }

    /// <summary>Global elements [from, to) (inside one work item) to <paramref name="dst"/>.</summary>
    private static void FillRange(IntPtr dst, long from, long to, ScalarType dtype, ulong seed, float scale)
    {
        int elementSize = dtype == ScalarType.Float32 ? 4 : 2;
        for (long pos = from; pos < to;)
        {
            long block = pos / SeedBlockElements;
            int offset = (int)(pos - block * SeedBlockElements);
            int stop = (int)Math.Min(SeedBlockElements, to - block * SeedBlockElements);
            IntPtr p = dst + (nint)((pos - from) * elementSize);
            if (Vector512.IsHardwareAccelerated) FillBlock512(p, block, offset, stop, dtype, seed, scale);
            else FillBlock256(p, block, offset, stop, dtype, seed, scale);
            pos += stop - offset;
        }
    }

    // ---- seeding (scalar, shared by both SIMD widths) ----

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The 8 lanes' xoshiro states, lane-major: state[4l + w] is word w of lane l.</summary>
    private static void SeedBlock(ulong seed, long block, Span<ulong> state)
    {
        ulong sm = Mix(Mix(seed) ^ (ulong)block);
        for (int i = 0; i < 4 * Lanes; i++) state[i] = Mix(sm += 0x9E3779B97F4A7C15UL);
        // An all-zero xoshiro state never leaves zero; SplitMix64 outputs make that practically impossible, but be exact.
        for (int l = 0; l < Lanes; l++)
            if ((state[4 * l] | state[4 * l + 1] | state[4 * l + 2] | state[4 * l + 3]) == 0) state[4 * l] = 1;
    }

    // ---- scalar tail conversion (partial pairs at the ends of a range) ----

    private static ushort ToBf16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);  // round to nearest even; values are finite
    }

    private static unsafe void StorePartial(ReadOnlySpan<float> pair, int lo, int hi, byte* dst, ScalarType dtype)
    {
        for (int k = lo; k < hi; k++, dst += dtype == ScalarType.Float32 ? 4 : 2)
        {
            switch (dtype)
            {
                case ScalarType.Float32: *(float*)dst = pair[k]; break;
                case ScalarType.BFloat16: *(ushort*)dst = ToBf16(pair[k]); break;
                default: *(Half*)dst = (Half)pair[k]; break;
            }
        }
    }

    // ---- 512-bit path: one register holds all 8 lanes ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Rotl(Vector512<ulong> x, [ConstantExpected] byte k) =>
        Avx512F.IsSupported ? Avx512F.RotateLeft(x, k) : (x << k) | (x >>> (64 - k));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Next(ref Vector512<ulong> s0, ref Vector512<ulong> s1, ref Vector512<ulong> s2, ref Vector512<ulong> s3)
    {
        Vector512<ulong> x = Rotl(s1 + (s1 << 2), 7);  // rotl(s1 * 5, 7)
        Vector512<ulong> result = x + (x << 3);       // * 9
        Vector512<ulong> t = s1 << 17;
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t;
        s3 = Rotl(s3, 45);
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Normals(Vector512<ulong> r, Vector512<float> scale)
    {
        Vector512<int> sums;
        if (Avx512BW.IsSupported)
        {
            // vpmaddubsw then vpmaddwd: bytes summed in pairs (≤ 510, no saturation), then pairs of pairs.
            Vector512<short> pairs = Avx512BW.MultiplyAddAdjacent(r.AsByte(), Vector512<sbyte>.One);
            sums = Avx512BW.MultiplyAddAdjacent(pairs, Vector512<short>.One);
        }
        else
        {
            Vector512<uint> w = r.AsUInt32();
            Vector512<uint> pairs = (w & Vector512.Create(0x00FF00FFu)) + ((w >>> 8) & Vector512.Create(0x00FF00FFu));
            sums = ((pairs & Vector512.Create(0xFFFFu)) + (pairs >>> 16)).AsInt32();
        }
        return Vector512.ConvertToSingle(sums - Vector512.Create(ByteSumMean)) * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Bf16Bits(Vector512<float> f)
    {
        Vector512<uint> bits = f.AsUInt32();
        return (bits + Vector512.Create(0x7FFFu) + ((bits >>> 16) & Vector512<uint>.One)) >>> 16;
    }

    /// <summary>
    /// fp16 bits (round to nearest even) of values that are 0 or normal in fp16; <paramref name="exact"/> is false
    /// when some lane is not (subnormal or overflowing: the caller converts those with the scalar cast).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Fp16Bits(Vector512<float> f, out bool exact)
    {
        Vector512<uint> bits = f.AsUInt32();
        Vector512<uint> abs = bits & Vector512.Create(0x7FFFFFFFu);
        Vector512<uint> isZero = Vector512.Equals(abs, Vector512<uint>.Zero);
        // Normal fp16 after rounding: 2^-14 ≤ |f| and |f| rounds to at most 65504 (below 65520).
        Vector512<uint> normal = Vector512.GreaterThanOrEqual(abs, Vector512.Create(0x38800000u))
                               & Vector512.LessThan(abs, Vector512.Create(0x477FF000u));
        exact = (normal | isZero) == Vector512<uint>.AllBitsSet;
        Vector512<uint> rounded = (abs + Vector512.Create(0xFFFu) + ((abs >>> 13) & Vector512<uint>.One)) >>> 13;
        Vector512<uint> h = (rounded - Vector512.Create(112u << 10)) & ~isZero;  // rebias the exponent 127 → 15
        return h | ((bits >>> 16) & Vector512.Create(0x8000u));
    }

    private static unsafe void FillBlock512(IntPtr dst, long block, int from, int to, ScalarType dtype, ulong seed, float scale)
    {
        Span<ulong> st = stackalloc ulong[4 * Lanes];
        SeedBlock(seed, block, st);
        Vector512<ulong> s0 = Vector512.Create(st[0], st[4], st[8], st[12], st[16], st[20], st[24], st[28]);
        Vector512<ulong> s1 = Vector512.Create(st[1], st[5], st[9], st[13], st[17], st[21], st[25], st[29]);
        Vector512<ulong> s2 = Vector512.Create(st[2], st[6], st[10], st[14], st[18], st[22], st[26], st[30]);
        Vector512<ulong> s3 = Vector512.Create(st[3], st[7], st[11], st[15], st[19], st[23], st[27], st[31]);
        Vector512<float> vscale = Vector512.Create(scale);

        int pair = from / PairElements;
        for (int i = 0; i < 2 * pair; i++) Next(ref s0, ref s1, ref s2, ref s3);  // skip to the pair holding `from`

        byte* p = (byte*)dst;
        Span<float> tmp = stackalloc float[PairElements];
        for (int k0 = pair * PairElements; k0 < to; k0 += PairElements)
        {
            Vector512<float> a = Normals(Next(ref s0, ref s1, ref s2, ref s3), vscale);
            Vector512<float> b = Normals(Next(ref s0, ref s1, ref s2, ref s3), vscale);
            if (k0 >= from && k0 + PairElements <= to)
            {
                switch (dtype)
                {
                    case ScalarType.BFloat16:
                        Vector512.Narrow(Bf16Bits(a), Bf16Bits(b)).Store((ushort*)p);
                        p += 64;
                        continue;
                    case ScalarType.Float32:
                        a.Store((float*)p);
                        b.Store((float*)p + 16);
                        p += 128;
                        continue;
                    case ScalarType.Float16:
                        Vector512<uint> ha = Fp16Bits(a, out bool exactA), hb = Fp16Bits(b, out bool exactB);
                        if (!exactA || !exactB) break;
                        Vector512.Narrow(ha, hb).Store((ushort*)p);
                        p += 64;
                        continue;
                }
            }
            a.CopyTo(tmp);
            b.CopyTo(tmp[16..]);
            int lo = Math.Max(from - k0, 0), hi = Math.Min(to - k0, PairElements);
            StorePartial(tmp, lo, hi, p, dtype);
            p += (hi - lo) * (dtype == ScalarType.Float32 ? 4 : 2);
        }
    }

    // ---- 256-bit path: lanes 0-3 in the "a" registers, 4-7 in "b" (same stream, other machines) ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ulong> Next(ref Vector256<ulong> s0, ref Vector256<ulong> s1, ref Vector256<ulong> s2, ref Vector256<ulong> s3)
    {
        Vector256<ulong> x = s1 + (s1 << 2);
        x = (x << 7) | (x >>> 57);
        Vector256<ulong> result = x + (x << 3);
        Vector256<ulong> t = s1 << 17;
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t;
        s3 = (s3 << 45) | (s3 >>> 19);
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Normals(Vector256<ulong> r, Vector256<float> scale)
    {
        Vector256<uint> w = r.AsUInt32();
        Vector256<uint> pairs = (w & Vector256.Create(0x00FF00FFu)) + ((w >>> 8) & Vector256.Create(0x00FF00FFu));
        Vector256<uint> sums = (pairs & Vector256.Create(0xFFFFu)) + (pairs >>> 16);
        return Vector256.ConvertToSingle(sums.AsInt32() - Vector256.Create(ByteSumMean)) * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Bf16Bits(Vector256<float> f)
    {
        Vector256<uint> bits = f.AsUInt32();
        return (bits + Vector256.Create(0x7FFFu) + ((bits >>> 16) & Vector256<uint>.One)) >>> 16;
    }

    private static unsafe void FillBlock256(IntPtr dst, long block, int from, int to, ScalarType dtype, ulong seed, float scale)
    {
        Span<ulong> st = stackalloc ulong[4 * Lanes];
        SeedBlock(seed, block, st);
        Vector256<ulong> a0 = Vector256.Create(st[0], st[4], st[8], st[12]), b0 = Vector256.Create(st[16], st[20], st[24], st[28]);
        Vector256<ulong> a1 = Vector256.Create(st[1], st[5], st[9], st[13]), b1 = Vector256.Create(st[17], st[21], st[25], st[29]);
        Vector256<ulong> a2 = Vector256.Create(st[2], st[6], st[10], st[14]), b2 = Vector256.Create(st[18], st[22], st[26], st[30]);
        Vector256<ulong> a3 = Vector256.Create(st[3], st[7], st[11], st[15]), b3 = Vector256.Create(st[19], st[23], st[27], st[31]);
        Vector256<float> vscale = Vector256.Create(scale);

        int pair = from / PairElements;
        for (int i = 0; i < 2 * pair; i++)
        {
            Next(ref a0, ref a1, ref a2, ref a3);
            Next(ref b0, ref b1, ref b2, ref b3);
        }

        byte* p = (byte*)dst;
        Span<float> tmp = stackalloc float[PairElements];
        for (int k0 = pair * PairElements; k0 < to; k0 += PairElements)
        {
            // Elements 0-7 of a step come from lanes 0-3, 8-15 from lanes 4-7.
            Vector256<float> f0 = Normals(Next(ref a0, ref a1, ref a2, ref a3), vscale);
            Vector256<float> f1 = Normals(Next(ref b0, ref b1, ref b2, ref b3), vscale);
            Vector256<float> f2 = Normals(Next(ref a0, ref a1, ref a2, ref a3), vscale);
            Vector256<float> f3 = Normals(Next(ref b0, ref b1, ref b2, ref b3), vscale);
            if (k0 >= from && k0 + PairElements <= to)
            {
                switch (dtype)
                {
                    case ScalarType.BFloat16:
                        Vector256.Narrow(Bf16Bits(f0), Bf16Bits(f1)).Store((ushort*)p);
                        Vector256.Narrow(Bf16Bits(f2), Bf16Bits(f3)).Store((ushort*)p + 16);
                        p += 64;
                        continue;
                    case ScalarType.Float32:
                        f0.Store((float*)p);
                        f1.Store((float*)p + 8);
                        f2.Store((float*)p + 16);
                        f3.Store((float*)p + 24);
                        p += 128;
                        continue;
                }
            }
            f0.CopyTo(tmp);
            f1.CopyTo(tmp[8..]);
            f2.CopyTo(tmp[16..]);
            f3.CopyTo(tmp[24..]);
            int lo = Math.Max(from - k0, 0), hi = Math.Min(to - k0, PairElements);
            StorePartial(tmp, lo, hi, p, dtype);
            p += (hi - lo) * (dtype == ScalarType.Float32 ? 4 : 2);
        }
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// The few vector operations the expert kernel needs, one struct per instruction set. The kernel's loops are generic over
/// these structs, so the JIT compiles one specialised copy per ISA with every call inlined (no virtual dispatch).
/// </summary>
internal unsafe interface ISimd<TVec> where TVec : unmanaged
{
    /// <summary>fp32 lanes per vector.</summary>
    static abstract int Width { get; }
    static abstract TVec Zero { get; }
    static abstract TVec Load(float* p);
    static abstract TVec MultiplyAdd(TVec a, TVec b, TVec acc);
    static abstract TVec Add(TVec a, TVec b);
    static abstract float Sum(TVec v);

    /// <summary>
    /// 2·Width bf16 values at <paramref name="p"/> as fp32: <paramref name="even"/> holds elements 0, 2, 4, ... (the low
    /// halves of each 32-bit word), <paramref name="odd"/> elements 1, 3, 5, ... One full-width load, then a shift and a
    /// mask: bf16 is the top half of an fp32, so no shuffles are needed. The activations are stored in the same
    /// even/odd order (<see cref="CpuExpertKernel"/>), so the dot products need no reordering either.
    /// </summary>
    static abstract void LoadBf16Pairs(void* p, out TVec even, out TVec odd);

    /// <summary>As <see cref="LoadBf16Pairs"/> for IEEE fp16 (exact conversion, subnormals, inf and NaN included).</summary>
    static abstract void LoadF16Pairs(void* p, out TVec even, out TVec odd);
}

internal readonly unsafe struct Avx512Ops : ISimd<Vector512<float>>
{
    public static bool IsSupported => Avx512F.IsSupported;
    public static int Width => 16;
    public static Vector512<float> Zero => Vector512<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> acc) =>
        Avx512F.FusedMultiplyAdd(a, b, acc);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector512<float> v) => Vector512.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadBf16Pairs(void* p, out Vector512<float> even, out Vector512<float> odd)
    {
        var v = Vector512.Load((uint*)p);
        even = Vector512.ShiftLeft(v, 16).AsSingle();
        odd = (v & Vector512.Create(0xFFFF0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadF16Pairs(void* p, out Vector512<float> even, out Vector512<float> odd)
    {
        var v = Vector512.Load((uint*)p);
        even = HalfToSingle(v & Vector512.Create(0xFFFFu));
        odd = HalfToSingle(Vector512.ShiftRightLogical(v, 16));
    }

    // No F16C intrinsics in .NET: rebias by multiplication. (h & 0x7FFF) << 13 is a float whose exponent is 112 too
    // small (normals), or a float denormal that the same multiplication makes exact (fp16 subnormals); inf/NaN keep
    // an all-ones exponent.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> HalfToSingle(Vector512<uint> h)
    {
        var magnitude = h & Vector512.Create(0x7FFFu);
        var shifted = Vector512.ShiftLeft(magnitude, 13);
        var finite = shifted.AsSingle() * Vector512.Create(0x77800000u).AsSingle() /* 2^112 */;
        var special = (shifted | Vector512.Create(0x7F800000u)).AsSingle();
        var value = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7C00u)).AsSingle(), special, finite);
        return (value.AsUInt32() | Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16)).AsSingle();
    }
}

internal readonly unsafe struct Avx2Ops : ISimd<Vector256<float>>
{
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;
    public static int Width => 8;
    public static Vector256<float> Zero => Vector256<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> acc) =>
        Fma.MultiplyAdd(a, b, acc);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadBf16Pairs(void* p, out Vector256<float> even, out Vector256<float> odd)
    {
        var v = Vector256.Load((uint*)p);
        even = Vector256.ShiftLeft(v, 16).AsSingle();
        odd = (v & Vector256.Create(0xFFFF0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadF16Pairs(void* p, out Vector256<float> even, out Vector256<float> odd)
    {
        var v = Vector256.Load((uint*)p);
        even = HalfToSingle(v & Vector256.Create(0xFFFFu));
        odd = HalfToSingle(Vector256.ShiftRightLogical(v, 16));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector256<uint> h)
    {
        var magnitude = h & Vector256.Create(0x7FFFu);
        var shifted = Vector256.ShiftLeft(magnitude, 13);
        var finite = shifted.AsSingle() * Vector256.Create(0x77800000u).AsSingle() /* 2^112 */;
        var special = (shifted | Vector256.Create(0x7F800000u)).AsSingle();
        var value = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7C00u)).AsSingle(), special, finite);
        return (value.AsUInt32() | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }
}

/// <summary>One lane: the reference path, and the fallback on machines without AVX2+FMA.</summary>
internal readonly unsafe struct ScalarOps : ISimd<float>
{
    public static int Width => 1;
    public static float Zero => 0f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(float* p) => *p;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MultiplyAdd(float a, float b, float acc) => a * b + acc;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Add(float a, float b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadBf16Pairs(void* p, out float even, out float odd)
    {
        uint v = *(uint*)p;
        even = BitConverter.UInt32BitsToSingle(v << 16);
        odd = BitConverter.UInt32BitsToSingle(v & 0xFFFF0000u);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void LoadF16Pairs(void* p, out float even, out float odd)
    {
        uint v = *(uint*)p;
        even = (float)BitConverter.UInt16BitsToHalf((ushort)v);
        odd = (float)BitConverter.UInt16BitsToHalf((ushort)(v >> 16));
    }
}

/// <summary>How one weight element type is read: 2·Width elements at a time, and one at a time for the tail.</summary>
internal unsafe interface IWeightFormat
{
    static abstract int ElementBytes { get; }

    /// <summary>True when <see cref="Load{TOps, TVec}"/> yields even/odd elements, so activations must be stored that way.</summary>
    static abstract bool Interleaved { get; }

    static abstract void Load<TOps, TVec>(byte* p, out TVec first, out TVec second) where TOps : ISimd<TVec> where TVec : unmanaged;

    static abstract float LoadScalar(byte* row, nint k);
}

internal readonly unsafe struct Bf16Format : IWeightFormat
{
    public static int ElementBytes => 2;
    public static bool Interleaved => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load<TOps, TVec>(byte* p, out TVec first, out TVec second) where TOps : ISimd<TVec> where TVec : unmanaged =>
        TOps.LoadBf16Pairs(p, out first, out second);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* row, nint k) => BitConverter.UInt32BitsToSingle((uint)((ushort*)row)[k] << 16);
}

internal readonly unsafe struct F16Format : IWeightFormat
{
    public static int ElementBytes => 2;
    public static bool Interleaved => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load<TOps, TVec>(byte* p, out TVec first, out TVec second) where TOps : ISimd<TVec> where TVec : unmanaged =>
        TOps.LoadF16Pairs(p, out first, out second);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* row, nint k) => (float)((Half*)row)[k];
}

internal readonly unsafe struct F32Format : IWeightFormat
{
    public static int ElementBytes => 4;
    public static bool Interleaved => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load<TOps, TVec>(byte* p, out TVec first, out TVec second) where TOps : ISimd<TVec> where TVec : unmanaged
    {
        first = TOps.Load((float*)p);
        second = TOps.Load((float*)p + TOps.Width);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* row, nint k) => ((float*)row)[k];
}

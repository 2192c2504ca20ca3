using Xunit;
using System.Runtime.InteropServices;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Loading;

public sealed unsafe class RandomFillTests
{
    /// <summary>Unmanaged buffer of <paramref name="count"/> elements of T, freed on dispose.</summary>
    private sealed class Buffer<T> : IDisposable where T : unmanaged
    {
        public readonly T* Ptr;
        public readonly long Count;
        public Buffer(long count)
        {
            Count = count;
            Ptr = (T*)NativeMemory.Alloc((nuint)count, (nuint)sizeof(T));
            new Span<byte>(Ptr, checked((int)(count * sizeof(T)))).Fill(0xCD);
        }
        public IntPtr Address => (IntPtr)Ptr;
        public Span<T> Span => new(Ptr, checked((int)Count));
        public void Dispose() => NativeMemory.Free(Ptr);
    }

    private static float Bf16ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    [Fact]
    public void FillNormalBf16_TenMillionValues_MeanZeroAndStdWithinTwoPercent()
    {
        const long n = 10_000_000;
        const float std = 0.02f;
        using var buf = new Buffer<ushort>(n);
        RandomFill.FillNormalBf16(buf.Address, n, seed: 42, std);

        double sum = 0, sumSq = 0;
        long withinOneSigma = 0;
        foreach (ushort b in buf.Span)
        {
            double x = Bf16ToFloat(b);
            sum += x;
            sumSq += x * x;
            if (Math.Abs(x) < std) withinOneSigma++;
        }
        double mean = sum / n, sd = Math.Sqrt(sumSq / n - mean * mean);
        Assert.InRange(mean, -0.002 * std, 0.002 * std);
        Assert.InRange(sd, 0.98 * std, 1.02 * std);
        // Roughly normal, not uniform: a normal has 68.3% within 1σ, a uniform of the same σ 57.7%.
        Assert.InRange(withinOneSigma / (double)n, 0.64, 0.72);
    }

    [Fact]
    public void FillNormalBf16_SameSeed_SameBytes_DifferentSeed_DifferentBytes()
    {
        const long n = 300_001;
        using var a = new Buffer<ushort>(n);
        using var b = new Buffer<ushort>(n);
        using var c = new Buffer<ushort>(n);
        RandomFill.FillNormalBf16(a.Address, n, seed: 7, std: 0.02f);
        RandomFill.FillNormalBf16(b.Address, n, seed: 7, std: 0.02f);
        RandomFill.FillNormalBf16(c.Address, n, seed: 8, std: 0.02f);

        Assert.True(a.Span.SequenceEqual(b.Span));
        int same = 0;
        for (int i = 0; i < n; i++) if (a.Span[i] == c.Span[i]) same++;
        Assert.True(same < n / 20, $"{same} of {n} values equal across seeds");
    }

    [Theory]
    [InlineData(1L)]
    [InlineData(31L)]                        // inside the first SIMD pair
    [InlineData(65_536L + 17)]               // just past a seed block
    [InlineData(2_097_152L - 5)]             // just before a bf16 work item boundary
    [InlineData(2_097_152L + 65_536 + 7)]    // inside the second work item
    public void FillNormalBf16_SplitAtAnyIndex_EqualsWholeFill(long k)
    {
        const long n = 2_200_003;
        using var whole = new Buffer<ushort>(n);
        using var parts = new Buffer<ushort>(n);
        RandomFill.FillNormalBf16(whole.Address, n, seed: 3, std: 0.05f);
        RandomFill.FillNormalBf16(parts.Address, k, seed: 3, std: 0.05f, startIndex: 0);
        RandomFill.FillNormalBf16(parts.Address + (nint)(k * 2), n - k, seed: 3, std: 0.05f, startIndex: k);

        Assert.True(whole.Span.SequenceEqual(parts.Span));
    }

    [Fact]
    public void FillNormal_ThreadCount_DoesNotChangeBytes()
    {
        const long n = 5_000_000;  // more than two bf16 work items
        using var one = new Buffer<ushort>(n);
        using var many = new Buffer<ushort>(n);
        RandomFill.FillNormalBf16(one.Address, n, seed: 11, std: 0.02f, maxThreads: 1);
        RandomFill.FillNormalBf16(many.Address, n, seed: 11, std: 0.02f, maxThreads: 4);

        Assert.True(one.Span.SequenceEqual(many.Span));
    }

    [Fact]
    public void FillNormalFloat32_MatchesScalarReferenceOfTheDocumentedStream()
    {
        const ulong seed = 0xFEEDFACE;
        const float std = 0.3f;
        // Start near the end of seed block 2 and run into block 3, with odd offsets on both ends.
        const long start = 3 * 65_536 - 101, n = 1_013;
        using var buf = new Buffer<float>(n);
        RandomFill.FillNormalFloat32(buf.Address, n, seed, std, startIndex: start);

        float[] expected = ReferenceStream(seed, std, start, n);
        for (int i = 0; i < n; i++)
            Assert.Equal(BitConverter.SingleToUInt32Bits(expected[i]), BitConverter.SingleToUInt32Bits(buf.Span[i]));
    }

    [Fact]
    public void FillNormalBf16AndFloat16_AreFloat32FillRoundedToNearestEven()
    {
        const long n = 70_001;
        using var f32 = new Buffer<float>(n);
        using var bf16 = new Buffer<ushort>(n);
        using var f16 = new Buffer<Half>(n);
        RandomFill.FillNormalFloat32(f32.Address, n, seed: 5, std: 1.5f, startIndex: 9);
        RandomFill.FillNormalBf16(bf16.Address, n, seed: 5, std: 1.5f, startIndex: 9);
        RandomFill.FillNormalFloat16(f16.Address, n, seed: 5, std: 1.5f, startIndex: 9);

        for (int i = 0; i < n; i++)
        {
            float x = f32.Span[i];
            Assert.Equal(BFloat16RoundReference(x), Bf16ToFloat(bf16.Span[i]));
            Assert.Equal(BitConverter.HalfToUInt16Bits((Half)x), BitConverter.HalfToUInt16Bits(f16.Span[i]));
        }
    }

    [Theory]
    [InlineData(1e-7f)]   // fp16 subnormals
    [InlineData(2e-3f)]   // a mix of normal and subnormal values
    [InlineData(3e4f)]    // fp16 overflow to infinity
    public void FillNormalFloat16_OutsideTheNormalRange_EqualsScalarCast(float std)
    {
        const long n = 4_099;
        using var f32 = new Buffer<float>(n);
        using var f16 = new Buffer<Half>(n);
        RandomFill.FillNormalFloat32(f32.Address, n, seed: 6, std);
        RandomFill.FillNormalFloat16(f16.Address, n, seed: 6, std);

        for (int i = 0; i < n; i++) Assert.Equal(BitConverter.HalfToUInt16Bits((Half)f32.Span[i]), BitConverter.HalfToUInt16Bits(f16.Span[i]));
    }

    [Fact]
    public void FillNormal_Tensor_EqualsPointerFill()
    {
        using var t = empty(new long[] { 3, 1000 }, ScalarType.BFloat16);
        RandomFill.FillNormal(t, seed: 9, std: 0.02f, startIndex: 500);
        using var buf = new Buffer<ushort>(3000);
        RandomFill.FillNormalBf16(buf.Address, 3000, seed: 9, std: 0.02f, startIndex: 500);

        var got = new ReadOnlySpan<ushort>((void*)TensorMemory.DataPtr(t), 3000);
        Assert.True(buf.Span.SequenceEqual(got));
    }

    [Fact]
    public void FillNormal_BadArguments_Throw()
    {
        using var buf = new Buffer<float>(16);
        Assert.Throws<ArgumentException>(() => RandomFill.FillNormal(buf.Address, 16, ScalarType.Int32, 1, 0.02f));
        Assert.Throws<ArgumentOutOfRangeException>(() => RandomFill.FillNormalFloat32(buf.Address, 16, 1, -1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => RandomFill.FillNormalFloat32(buf.Address, 16, 1, float.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => RandomFill.FillNormalFloat32(buf.Address, -1, 1, 0.02f));
        Assert.Throws<ArgumentOutOfRangeException>(() => RandomFill.FillNormalFloat32(buf.Address, 16, 1, 0.02f, startIndex: -1));
        Assert.Throws<ArgumentNullException>(() => RandomFill.FillNormalFloat32(IntPtr.Zero, 16, 1, 0.02f));
        RandomFill.FillNormalFloat32(IntPtr.Zero, 0, 1, 0.02f);  // nothing to write: no-op
        using var cpuInt = zeros(4, ScalarType.Int32);
        Assert.Throws<ArgumentException>(() => RandomFill.FillNormal(cpuInt, 1, 0.02f));
        using var strided = zeros(new long[] { 4, 4 }, ScalarType.Float32).t();
        Assert.Throws<ArgumentException>(() => RandomFill.FillNormal(strided, 1, 0.02f));
    }

    // ---- scalar reference of the stream documented on RandomFill ----

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static float[] ReferenceStream(ulong seed, float std, long start, long n)
    {
        float scale = (float)(std / Math.Sqrt(21845.0));
        var result = new float[n];
        long block = -1;
        var s = new ulong[8, 4];
        var words = new uint[16];
        long stepInBlock = -1;
        for (long i = 0; i < start + n; i++)
        {
            long b = i / RandomFill.SeedBlockElements, k = i % RandomFill.SeedBlockElements;
            if (b != block)
            {
                if (b * RandomFill.SeedBlockElements + RandomFill.SeedBlockElements <= start) { i = (b + 1) * RandomFill.SeedBlockElements - 1; continue; }
                block = b;
                stepInBlock = -1;
                ulong sm = Mix(Mix(seed) ^ (ulong)b);
                for (int l = 0; l < 8; l++)
                    for (int w = 0; w < 4; w++)
                        s[l, w] = Mix(sm += 0x9E3779B97F4A7C15UL);
            }
            while (stepInBlock < k / 16)
            {
                for (int l = 0; l < 8; l++)
                {
                    ulong r = ulong.RotateLeft(s[l, 1] * 5, 7) * 9;
                    ulong t = s[l, 1] << 17;
                    s[l, 2] ^= s[l, 0]; s[l, 3] ^= s[l, 1]; s[l, 1] ^= s[l, 2]; s[l, 0] ^= s[l, 3]; s[l, 2] ^= t;
                    s[l, 3] = ulong.RotateLeft(s[l, 3], 45);
                    words[2 * l] = (uint)r;
                    words[2 * l + 1] = (uint)(r >> 32);
                }
                stepInBlock++;
            }
            if (i < start) continue;
            uint word = words[k % 16];
            int byteSum = (int)((word & 0xFF) + ((word >> 8) & 0xFF) + ((word >> 16) & 0xFF) + (word >> 24));
            result[i - start] = (byteSum - 510) * scale;
        }
        return result;
    }

    private static float BFloat16RoundReference(float x)
    {
        // Round to nearest even on the 16 dropped bits, by arithmetic on the exact value.
        uint bits = BitConverter.SingleToUInt32Bits(x);
        uint down = bits & 0xFFFF0000u, up = down + 0x10000u;
        float lo = BitConverter.UInt32BitsToSingle(down), hi = BitConverter.UInt32BitsToSingle(up);
        double dLo = Math.Abs((double)x - lo), dHi = Math.Abs((double)hi - x);
        if (dLo < dHi) return lo;
        if (dHi < dLo) return hi;
        return (down & 0x10000u) == 0 ? lo : hi;
    }
}

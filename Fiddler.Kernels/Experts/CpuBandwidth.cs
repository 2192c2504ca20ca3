using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// The machine's own DRAM read bandwidth as seen through a <see cref="CpuWorkerPool"/>: the ceiling the memory-bound
/// expert kernel is judged against (bench-cpu-expert).
/// </summary>
public static unsafe class CpuBandwidth
{
    private const long ChunkBytes = 1 << 20;
    private const int PrefetchBytes = 1024;

    /// <summary>Writes every byte (so pages are mapped before timing) from all participants.</summary>
    public static void Fill(CpuWorkerPool pool, byte* p, long bytes, byte value)
    {
        int chunks = (int)((bytes + ChunkBytes - 1) / ChunkBytes);
        pool.ParallelFor(chunks, c =>
        {
            long start = c * ChunkBytes;
            new Span<byte>(p + start, (int)Math.Min(ChunkBytes, bytes - start)).Fill(value);
        });
    }

    /// <summary>Sums <paramref name="bytes"/> at <paramref name="p"/> in parallel <paramref name="repeats"/> times; the best GB/s (10⁹ B/s).</summary>
    public static double MeasureReadGBps(CpuWorkerPool pool, byte* p, long bytes, int repeats = 5)
    {
        int chunks = (int)(bytes / ChunkBytes);
        if (chunks == 0) throw new ArgumentException("buffer must hold at least 1 MiB", nameof(bytes));
        var sums = new ulong[chunks]; // kept so the reads can't be optimised away
        double best = double.MaxValue;
        for (int r = 0; r < repeats; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            pool.ParallelFor(chunks, c => sums[c] = Sum(p + c * ChunkBytes, ChunkBytes), grain: 1);
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        GC.KeepAlive(sums);
        return chunks * ChunkBytes / best / 1e9;
    }

    /// <summary>
    /// Reads every 1 MiB chunk of <paramref name="regions"/> (addresses and byte counts; a region's tail under 1 MiB is
    /// skipped) once in parallel; returns the bytes read. One pass of <see cref="MeasureReadGBps"/> over memory that is
    /// not one buffer (e.g. expert weights).
    /// </summary>
    public static long ReadOnce(CpuWorkerPool pool, IReadOnlyList<(IntPtr Start, long Bytes)> regions)
    {
        var chunks = new List<IntPtr>();
        foreach (var (start, bytes) in regions)
            for (long c = 0; c + ChunkBytes <= bytes; c += ChunkBytes) chunks.Add(start + (nint)c);
        var sums = new ulong[chunks.Count];
        pool.ParallelFor(chunks.Count, c => sums[c] = Sum((byte*)chunks[c], ChunkBytes), grain: 1);
        GC.KeepAlive(sums);
        return chunks.Count * ChunkBytes;
    }

    // Four streams a quarter of the chunk apart, each with a software prefetch 1 KB ahead: the access pattern of the
    // expert kernel (four weight rows at a time), so the two numbers compare like for like.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ulong Sum(byte* p, long bytes)
    {
        long quarter = bytes / 4;
        byte* p1 = p + quarter, p2 = p + 2 * quarter, p3 = p + 3 * quarter;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<uint> a = default, b = default, c = default, d = default;
            for (long i = 0; i + 64 <= quarter; i += 64)
            {
                if (Sse.IsSupported)
                {
                    Sse.Prefetch0(p + i + PrefetchBytes); Sse.Prefetch0(p1 + i + PrefetchBytes);
                    Sse.Prefetch0(p2 + i + PrefetchBytes); Sse.Prefetch0(p3 + i + PrefetchBytes);
                }
                a += Vector512.Load((uint*)(p + i));
                b += Vector512.Load((uint*)(p1 + i));
                c += Vector512.Load((uint*)(p2 + i));
                d += Vector512.Load((uint*)(p3 + i));
            }
            return Vector512.Sum(a + b + c + d);
        }
        Vector256<uint> e = default, f = default, g = default, h = default;
        for (long i = 0; i + 64 <= quarter; i += 64)
        {
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(p + i + PrefetchBytes); Sse.Prefetch0(p1 + i + PrefetchBytes);
                Sse.Prefetch0(p2 + i + PrefetchBytes); Sse.Prefetch0(p3 + i + PrefetchBytes);
            }
            e += Vector256.Load((uint*)(p + i)) + Vector256.Load((uint*)(p + i + 32));
            f += Vector256.Load((uint*)(p1 + i)) + Vector256.Load((uint*)(p1 + i + 32));
            g += Vector256.Load((uint*)(p2 + i)) + Vector256.Load((uint*)(p2 + i + 32));
            h += Vector256.Load((uint*)(p3 + i)) + Vector256.Load((uint*)(p3 + i + 32));
        }
        return Vector256.Sum(e + f + g + h);
    }
}

using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// The machine's own DRAM read bandwidth as seen through a <see cref="CpuWorkerPool"/>: the ceiling the memory-bound
/// expert kernel is judged against (bench-cpu-expert).
/// </summary>
public static unsafe class CpuBandwidth
{
    private const long ChunkBytes = 1 << 20;

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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ulong Sum(byte* p, long bytes)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<uint> a = default, b = default, c = default, d = default;
            for (long i = 0; i + 256 <= bytes; i += 256)
            {
                a += Vector512.Load((uint*)(p + i));
                b += Vector512.Load((uint*)(p + i + 64));
                c += Vector512.Load((uint*)(p + i + 128));
                d += Vector512.Load((uint*)(p + i + 192));
            }
            return Vector512.Sum(a + b + c + d);
        }
        Vector256<uint> e = default, f = default, g = default, h = default;
        for (long i = 0; i + 128 <= bytes; i += 128)
        {
            e += Vector256.Load((uint*)(p + i));
            f += Vector256.Load((uint*)(p + i + 32));
            g += Vector256.Load((uint*)(p + i + 64));
            h += Vector256.Load((uint*)(p + i + 96));
        }
        return Vector256.Sum(e + f + g + h);
    }
}

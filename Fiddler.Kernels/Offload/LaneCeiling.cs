using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// This host's ceiling for a decode step's two expert lanes, measured on the engine's own objects: the CPU worker pool
/// reading CPU-resident expert weights (the expert kernel's access pattern, <see cref="CpuBandwidth"/>), the CUDA
/// stager copying other CPU-resident experts into its slots, and both at once — they share the host's DRAM, so each is
/// slower together than alone. A token's offloaded expert bytes over the concurrent sum is the fastest any split of
/// those bytes between the lanes can move them; the GPU's own work (attention, resident experts) is not counted, so
/// real decode stays below it.
/// </summary>
public static class LaneCeiling
{
    /// <param name="CpuReadGBps">The pool reading alone (best pass).</param>
    /// <param name="CopyGBps">The stager copying alone (best of two runs of the copies).</param>
    /// <param name="CpuReadWithCopyGBps">The pool reading while the copies run.</param>
    /// <param name="CopyWithCpuReadGBps">The copies while the pool reads.</param>
    /// <param name="WindowMs">How long the concurrent window lasted.</param>
    public sealed record Result(double CpuReadGBps, double CopyGBps, double CpuReadWithCopyGBps, double CopyWithCpuReadGBps, double WindowMs)
    {
        /// <summary>Both lanes' bytes per second at the same time (10⁹ B/s).</summary>
        public double ConcurrentGBps => CpuReadWithCopyGBps + CopyWithCpuReadGBps;

        /// <summary>Tokens per second if each token's <paramref name="offloadedBytesPerToken"/> moved at <see cref="ConcurrentGBps"/>.</summary>
        public double DecodeTokS(double offloadedBytesPerToken)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(offloadedBytesPerToken);
            return ConcurrentGBps * 1e9 / offloadedBytesPerToken;
        }
    }

    /// <summary>
    /// Measures the lanes alone and together. <paramref name="copied"/> and <paramref name="read"/> should be distinct
    /// experts in page-locked host memory, each set larger than the CPU's caches. Every slot of the stager must be free;
    /// all are free again on return (its transfer counters include the probe's copies).
    /// </summary>
    /// <param name="copies">Expert copies per copy run (round robin over <paramref name="copied"/> and the slots).</param>
    /// <param name="windows">Concurrent windows; the one with the highest combined rate is reported (a host's DRAM
    /// bandwidth dips for a moment: one window on the H100 host read the CPU 14 % below what the engine's own CPU lane
    /// sustained beside the copies in the same run).</param>
    public static Result Measure(CpuWorkerPool pool, WeightStager stager, IReadOnlyList<HostExpert> copied, IReadOnlyList<HostExpert> read,
        int copies = 24, int windows = 2)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(windows, 1);
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(stager);
        if (copied.Count == 0 || read.Count == 0) throw new ArgumentException("the probe needs at least one expert to copy and one to read");
        if (copied.Intersect(read).Any()) throw new ArgumentException("the copied and the read experts must differ (one lane would read the other's bytes from cache)");
        ArgumentOutOfRangeException.ThrowIfLessThan(copies, stager.SlotCount);
        for (int s = 0; s < stager.SlotCount; s++)
            if (stager.IsInUse(s)) throw new InvalidOperationException($"staging slot {s} is in use: the probe needs every slot free");

        var perExpert = read.Select(Regions).ToArray();
        var all = perExpert.SelectMany(r => r).ToArray();

        // Warm-up: page tables, the pool's threads, the copy engine.
        CpuBandwidth.ReadOnce(pool, all);
        stager.Release(stager.Begin(0, copied[0]).Slot); // released at once: nothing reads it, the copy still runs
        stager.Synchronize();

        double cpuAlone = 0;
        for (int pass = 0; pass < 3; pass++)
        {
            long t0 = Stopwatch.GetTimestamp();
            long bytes = CpuBandwidth.ReadOnce(pool, all);
            cpuAlone = Math.Max(cpuAlone, bytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9);
        }

        double copyAlone = 0;
        for (int run = 0; run < 2; run++)
        {
            long t0 = Stopwatch.GetTimestamp();
            long bytes = QueueCopies(stager, copied, copies, out var last);
            try
            {
                stager.WaitForCopy(last);
                copyAlone = Math.Max(copyAlone, bytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9);
            }
            finally
            {
                stager.Release(last.Slot);
            }
        }

        // Together: the copies are queued, then the pool reads one expert at a time until the last copy has landed; both
        // rates are over that one window (the copies' end is seen within one expert's read, ~1.5 % of the window).
        Result? best = null;
        for (int w = 0; w < windows; w++)
        {
            int i = 0;
            var (readGBps, copyGBps, windowMs) = Beside(stager, copied, copies, () => CpuBandwidth.ReadOnce(pool, perExpert[i++ % perExpert.Length]));
            var r = new Result(cpuAlone, copyAlone, readGBps, copyGBps, windowMs);
            if (best is null || r.ConcurrentGBps > best.ConcurrentGBps) best = r;
        }
        return best!;
    }

    /// <summary>
    /// Runs <paramref name="work"/> (one call: one unit of CPU work, returning the bytes it read) over and over while
    /// <paramref name="copies"/> expert copies stream into the stager's slots, until the last has landed: the work's and
    /// the copies' rates (10⁹ B/s) over that window, and its length. Every slot of the stager must be free; all are free
    /// again on return. The engine's decode lanes in miniature: <c>fiddler bench-cpu-expert --with-copies</c> runs the
    /// expert kernel this way.
    /// </summary>
    public static (double WorkGBps, double CopyGBps, double WindowMs) Beside(WeightStager stager, IReadOnlyList<HostExpert> copied, int copies, Func<long> work)
    {
        ArgumentNullException.ThrowIfNull(stager);
        ArgumentNullException.ThrowIfNull(copied);
        ArgumentNullException.ThrowIfNull(work);
        if (copied.Count == 0) throw new ArgumentException("nothing to copy");
        ArgumentOutOfRangeException.ThrowIfLessThan(copies, stager.SlotCount);
        long start = Stopwatch.GetTimestamp();
        long copyBytes = QueueCopies(stager, copied, copies, out var final);
        long workBytes = 0;
        try
        {
            while (!stager.IsCopyComplete(final)) workBytes += work();
        }
        finally
        {
            stager.Release(final.Slot);
        }
        double window = Stopwatch.GetElapsedTime(start).TotalSeconds;
        stager.Synchronize();
        return (workBytes / window / 1e9, copyBytes / window / 1e9, window * 1000);
    }

    /// <summary>Queues <paramref name="copies"/> expert copies round robin over the slots; all but the last slot are
    /// released at once (nothing reads them), the last stays staged so its copy can be polled.</summary>
    private static long QueueCopies(WeightStager stager, IReadOnlyList<HostExpert> experts, int copies, out StagedExpert last)
    {
        long bytes = 0;
        last = default;
        for (int i = 0; i < copies; i++)
        {
            var staged = stager.Begin(i % stager.SlotCount, experts[i % experts.Count]);
            bytes += staged.Bytes;
            if (i < copies - 1) stager.Release(staged.Slot);
            else last = staged;
        }
        return bytes;
    }

    private static (IntPtr, long)[] Regions(HostExpert e) => [(e.W1, e.W1Bytes), (e.W3, e.W3Bytes), (e.W2, e.W2Bytes)];
}

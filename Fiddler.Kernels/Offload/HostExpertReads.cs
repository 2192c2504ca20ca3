using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// Every host-resident expert read alone by the worker pool (the lane-ceiling probe's plain read, one expert at a time),
/// pass after pass: whether the host's DRAM serves all of them alike. <see cref="LaneCeiling"/> reads the first twelve
/// only; decode reads all of them. On a host that backs part of the process's memory with slower DRAM (another socket
/// behind a virtual machine's single NUMA node, say) the probe and the engine would see different memory, and the
/// slow experts would read slower in every pass (a high correlation between passes), not at random.
/// </summary>
public static class HostExpertReads
{
    /// <summary>Per pass, each expert's read rate (10⁹ B/s), experts in the order given (layer by layer).</summary>
    public sealed record Result(double[][] PassGBps)
    {
        public int Experts => PassGBps.Length == 0 ? 0 : PassGBps[0].Length;

        /// <summary>Each expert's best pass.</summary>
        public double[] Best => Enumerable.Range(0, Experts).Select(e => PassGBps.Max(p => p[e])).ToArray();

        /// <summary>The <paramref name="q"/>-quantile (0..1, nearest rank) of the experts' best rates.</summary>
        public double Quantile(double q)
        {
            if (!(q is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(q), q, "must be in 0..1");
            var sorted = Best.Order().ToArray();
            return sorted.Length == 0 ? double.NaN : sorted[(int)Math.Round(q * (sorted.Length - 1), MidpointRounding.AwayFromZero)];
        }

        /// <summary>
        /// Pearson correlation of the experts' rates between the first two passes (NaN with one pass or no spread): near 1,
        /// the slow experts are slow every time (where their memory is); near 0, the spread is noise.
        /// </summary>
        public double PassCorrelation
        {
            get
            {
                if (PassGBps.Length < 2 || Experts < 2) return double.NaN;
                double[] a = PassGBps[0], b = PassGBps[1];
                double ma = a.Average(), mb = b.Average();
                double cov = 0, va = 0, vb = 0;
                for (int i = 0; i < a.Length; i++)
                {
                    cov += (a[i] - ma) * (b[i] - mb);
                    va += (a[i] - ma) * (a[i] - ma);
                    vb += (b[i] - mb) * (b[i] - mb);
                }
                return va == 0 || vb == 0 ? double.NaN : cov / Math.Sqrt(va * vb);
            }
        }

        /// <summary>The median best rate of experts [from, to) (e.g. the lane-ceiling probe's first twelve).</summary>
        public double MedianOf(int from, int to)
        {
            var part = Best[Math.Clamp(from, 0, Experts)..Math.Clamp(to, 0, Experts)].Order().ToArray();
            return part.Length == 0 ? double.NaN : part.Length % 2 == 1 ? part[part.Length / 2] : (part[part.Length / 2 - 1] + part[part.Length / 2]) / 2;
        }
    }

    /// <summary>
    /// Reads each of <paramref name="experts"/> once per pass (after one untimed warm-up read of each). Experts whose
    /// matrices are all under 1 MiB (the read's chunk) cannot be timed: null when none can.
    /// </summary>
    public static Result? Measure(CpuWorkerPool pool, IReadOnlyList<HostExpert> experts, int passes = 2)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(experts);
        ArgumentOutOfRangeException.ThrowIfLessThan(passes, 1);
        var regions = experts.Select(e => new (IntPtr, long)[] { (e.W1, e.W1Bytes), (e.W3, e.W3Bytes), (e.W2, e.W2Bytes) }).ToArray();
        if (regions.Length == 0 || CpuBandwidth.ReadOnce(pool, regions[0]) == 0) return null;
        foreach (var r in regions) CpuBandwidth.ReadOnce(pool, r); // page tables, the pool's threads
        var result = new double[passes][];
        for (int p = 0; p < passes; p++)
        {
            result[p] = new double[regions.Length];
            for (int e = 0; e < regions.Length; e++)
            {
                long t0 = Stopwatch.GetTimestamp();
                long bytes = CpuBandwidth.ReadOnce(pool, regions[e]);
                result[p][e] = bytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9;
            }
        }
        return new Result(result);
    }
}

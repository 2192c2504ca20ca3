using Fiddler.Kernels.Offload;

namespace Fiddler.Host.Cli;

// --ceiling-windows: does a run's decode rate follow what the host's DRAM gives the lanes at that moment?
public static partial class BenchRun
{
    /// <summary>
    /// One round of <c>--ceiling-windows</c>: a decode window, then the host's lane ceiling measured right after it
    /// (null where it could not be: off CUDA, too few host experts, or the probe failed).
    /// </summary>
    /// <param name="OffloadedBytesPerToken">The window's expert bytes per token that were not resident (its own hit rate).</param>
    public sealed record CeilingRound(WindowStats Window, double OffloadedBytesPerToken, LaneCeiling.Result? Ceiling)
    {
        /// <summary>Decode tok/s if the window's offloaded bytes moved at the probe's concurrent rate.</summary>
        public double? CeilingTokS => Ceiling is { } c && OffloadedBytesPerToken > 0 ? c.DecodeTokS(OffloadedBytesPerToken) : null;

        /// <summary>The window's tok/s over <see cref="CeilingTokS"/>.</summary>
        public double? Fraction => CeilingTokS is double t && t > 0 ? Window.TokS / t : null;

        /// <summary>The SIMD kernel's own GB/s in the window over the probe's plain read beside the copies.</summary>
        public double? KernelOfProbe => Ceiling is { CpuReadWithCopyGBps: > 0 } c && Window.KernelGBps > 0 ? Window.KernelGBps / c.CpuReadWithCopyGBps : null;
    }

    /// <summary>
    /// The rounds of <c>--ceiling-windows</c>. If the windows' tok/s move with the ceilings measured beside them
    /// (<see cref="Correlation"/> near 1) while <see cref="CeilingRound.Fraction"/> stays put, a run's speed is set by what
    /// the host's memory gives it at that moment (other tenants of the machine), not by the engine.
    /// </summary>
    public sealed record CeilingWindows(CeilingRound[] Rounds)
    {
        private IEnumerable<CeilingRound> Measured => Rounds.Where(r => r.CeilingTokS is not null);

        /// <summary>Pearson r of the windows' tok/s against their ceilings; null with fewer than three measured rounds or no spread.</summary>
        public double? Correlation => Pearson(Measured.Select(r => r.Window.TokS).ToArray(), Measured.Select(r => r.CeilingTokS!.Value).ToArray());

        /// <summary>Pearson r of the kernel's GB/s against the probe's read beside copies, over the rounds that have both; null
        /// with fewer than three such rounds or no spread.</summary>
        public double? KernelCorrelation
        {
            get
            {
                var both = Rounds.Where(r => r.KernelOfProbe is not null).ToArray();
                return Pearson(both.Select(r => r.Window.KernelGBps).ToArray(), both.Select(r => r.Ceiling!.CpuReadWithCopyGBps).ToArray());
            }
        }
    }

    /// <summary>
    /// <paramref name="rounds"/> rounds of one decode <paramref name="window"/> then one <paramref name="ceiling"/> probe.
    /// <paramref name="hitRate"/> is read after each window (the window resets the scheduler's counters, so it is that
    /// window's); <paramref name="expertBytesPerToken"/> is every chosen expert's bytes per token (layers × top-k × one
    /// expert). A probe that throws is reported through <paramref name="log"/> and its round has no ceiling.
    /// </summary>
    public static CeilingWindows MeasureCeilingWindows(int rounds, Func<WindowStats> window, Func<double> hitRate, double expertBytesPerToken,
        Func<LaneCeiling.Result?> ceiling, Action<string> log)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(expertBytesPerToken);
        var result = new CeilingRound[rounds];
        for (int i = 0; i < rounds; i++)
        {
            var w = window();
            double offloaded = (1 - hitRate()) * expertBytesPerToken;
            LaneCeiling.Result? c = null;
            try { c = ceiling(); }
            catch (Exception e) when (e is Fiddler.Kernels.Cuda.CudaException or InvalidOperationException or ArgumentException)
            {
                log($"--ceiling-windows: round {i + 1}'s lane ceiling not measured: {e.Message}");
            }
            result[i] = new CeilingRound(w, offloaded, c);
        }
        if (result.All(r => r.Ceiling is null))
            log("--ceiling-windows: no lane ceiling could be measured (it needs CUDA and at least twelve host experts), so the rounds have tok/s only");
        return new CeilingWindows(result);
    }

    /// <summary>Pearson's correlation of two equally long series; null with fewer than three points or a series without spread.</summary>
    public static double? Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException($"series of {x.Count} and {y.Count} values");
        if (x.Count < 3) return null;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Count; i++)
        {
            double dx = x[i] - mx, dy = y[i] - my;
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        return sxx <= 0 || syy <= 0 ? null : sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>The JSON of <c>ceiling_windows</c>: each round, then the correlations and the spread of the fractions.</summary>
    private static Dictionary<string, object?> CeilingWindowsReport(CeilingWindows cw)
    {
        static double? R(double? v, int digits) => v is double d ? Math.Round(d, digits) : null;
        static Dictionary<string, double>? Spread(IEnumerable<double?> values)
        {
            var v = values.OfType<double>().Order().ToArray();
            return v.Length == 0 ? null : new() { ["min"] = Math.Round(v[0], 3), ["median"] = Math.Round(Median(v), 3), ["max"] = Math.Round(v[^1], 3) };
        }
        return new()
        {
            ["rounds"] = cw.Rounds.Select(r => new Dictionary<string, object?>
            {
                ["tok_s"] = Math.Round(r.Window.TokS, 3),
                ["kernel_gb_s"] = Math.Round(r.Window.KernelGBps, 1),
                ["offloaded_gb_per_token"] = Math.Round(r.OffloadedBytesPerToken / 1e9, 3),
                ["ceiling_tok_s"] = R(r.CeilingTokS, 2),
                ["concurrent_gb_s"] = R(r.Ceiling?.ConcurrentGBps, 1),
                ["cpu_read_gb_s"] = R(r.Ceiling?.CpuReadGBps, 1),
                ["cpu_read_with_h2d_gb_s"] = R(r.Ceiling?.CpuReadWithCopyGBps, 1),
                ["fraction"] = R(r.Fraction, 3),
                ["kernel_of_probe"] = R(r.KernelOfProbe, 3),
            }).ToArray(),
            ["tok_s_vs_ceiling_r"] = R(cw.Correlation, 3),
            ["kernel_vs_probe_r"] = R(cw.KernelCorrelation, 3),
            ["tok_s"] = Spread(cw.Rounds.Select(r => (double?)r.Window.TokS)),
            ["ceiling_tok_s"] = Spread(cw.Rounds.Select(r => r.CeilingTokS)),
            ["fraction"] = Spread(cw.Rounds.Select(r => r.Fraction)),
            ["kernel_of_probe"] = Spread(cw.Rounds.Select(r => r.KernelOfProbe)),
        };
    }
}

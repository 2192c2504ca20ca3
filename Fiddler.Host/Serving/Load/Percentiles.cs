namespace Fiddler.Host.Serving.Load;

/// <summary>Count, nearest-rank percentiles and maximum of a set of latencies (milliseconds); null fields when empty.</summary>
public sealed record LatencySummary(int Count, double? P50, double? P90, double? P99, double? Max)
{
    public static readonly LatencySummary Empty = new(0, null, null, null, null);
}

/// <summary>
/// Nearest-rank percentiles (the value at rank ⌈p·n⌉ of the sorted samples): every reported number is a latency that
/// really happened, and p100 is the maximum. No interpolation, so small samples read plainly (p99 of 10 runs = the max).
/// </summary>
public static class Percentiles
{
    /// <summary>The <paramref name="p"/>-th percentile (0 &lt; p ≤ 100) of samples already sorted ascending.</summary>
    public static double NearestRank(IReadOnlyList<double> sorted, double p)
    {
        if (sorted.Count == 0) throw new ArgumentException("no samples", nameof(sorted));
        if (!(p > 0 && p <= 100)) throw new ArgumentOutOfRangeException(nameof(p), p, "percentile must be in (0, 100]");
        // The epsilon keeps p·n that is an integer in exact arithmetic (e.g. 0.9 · 10) from rounding up a rank.
        int rank = (int)Math.Ceiling(p / 100.0 * sorted.Count - 1e-9);
        return sorted[Math.Clamp(rank, 1, sorted.Count) - 1];
    }

    public static LatencySummary Summarize(IEnumerable<double> samples)
    {
        var sorted = samples.Where(double.IsFinite).Order().ToArray();
        if (sorted.Length == 0) return LatencySummary.Empty;
        return new LatencySummary(sorted.Length, NearestRank(sorted, 50), NearestRank(sorted, 90), NearestRank(sorted, 99), sorted[^1]);
    }
}

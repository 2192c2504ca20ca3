using System.Text.Json.Serialization;

namespace Fiddler.Actors.Scheduling;

/// <summary>One measurement: <see cref="Tokens"/> tokens took <see cref="Ms"/> milliseconds.</summary>
public sealed record LatencyPoint(
    [property: JsonPropertyName("tokens")] int Tokens,
    [property: JsonPropertyName("ms")] double Ms);

/// <summary>
/// A fitted function tokens → milliseconds: piecewise-linear through measured points. Below the first point it stays
/// at the first point's value (a kernel does not get faster than its smallest measured batch); beyond the last it
/// continues the last segment's slope. Serializes as <c>{"points": [{"tokens": 1, "ms": 3.9}, ...]}</c>.
/// </summary>
public sealed class LatencyModel
{
    private readonly LatencyPoint[] _points;

    /// <summary>Points with distinct token counts ≥ 1 and finite, non-negative times, in any order.</summary>
    [JsonConstructor]
    public LatencyModel(IReadOnlyList<LatencyPoint> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        if (points.Count == 0) throw new ArgumentException("a latency model needs at least one measured point");
        if (points.Any(p => p is null)) throw new ArgumentException("a latency point is null"); // a JSON null in a profile
        _points = points.OrderBy(p => p.Tokens).ToArray();
        for (int i = 0; i < _points.Length; i++)
        {
            var p = _points[i];
            if (p.Tokens < 1) throw new ArgumentException($"latency point tokens must be >= 1, got {p.Tokens}");
            if (!double.IsFinite(p.Ms) || p.Ms < 0) throw new ArgumentException($"latency point ms must be finite and >= 0, got {p.Ms}");
            if (i > 0 && _points[i - 1].Tokens == p.Tokens)
                throw new ArgumentException($"two latency points for {p.Tokens} tokens; use LatencyModel.Fit to combine repeats");
        }
    }

    /// <summary>The measured points, sorted by tokens.</summary>
    [JsonPropertyName("points")]
    public IReadOnlyList<LatencyPoint> Points => _points;

    /// <summary>Predicted milliseconds for <paramref name="tokens"/> tokens.</summary>
    public double Ms(int tokens)
    {
        var p = _points;
        if (tokens <= p[0].Tokens) return p[0].Ms;
        int last = p.Length - 1;
        if (tokens >= p[last].Tokens)
        {
            if (last == 0) return p[0].Ms;
            // Noise can make the last segment slope down; more tokens must never be predicted cheaper than measured.
            double slope = Math.Max(0, (p[last].Ms - p[last - 1].Ms) / (p[last].Tokens - p[last - 1].Tokens));
            return p[last].Ms + slope * (tokens - p[last].Tokens);
        }
        int hi = 1;
        while (p[hi].Tokens < tokens) hi++;
        var (a, b) = (p[hi - 1], p[hi]);
        return a.Ms + (b.Ms - a.Ms) * (tokens - a.Tokens) / (b.Tokens - a.Tokens);
    }

    /// <summary>
    /// Fits repeated measurements: the median per token count (robust to the odd slow run from a page fault or a
    /// context switch), then piecewise-linear through the medians.
    /// </summary>
    public static LatencyModel Fit(IEnumerable<(int Tokens, double Ms)> samples)
    {
        var points = samples.GroupBy(s => s.Tokens)
            .Select(g =>
            {
                var ms = g.Select(s => s.Ms).Order().ToArray();
                double median = ms.Length % 2 == 1 ? ms[ms.Length / 2] : (ms[ms.Length / 2 - 1] + ms[ms.Length / 2]) / 2;
                return new LatencyPoint(g.Key, median);
            })
            .ToArray();
        return new LatencyModel(points);
    }

    /// <summary>The same time for any token count (e.g. a weight transfer).</summary>
    public static LatencyModel Constant(double ms) => new([new LatencyPoint(1, ms)]);

    /// <summary><c>fixedMs + msPerToken · tokens</c> for tokens ≥ 1: synthetic models for tests and estimates.</summary>
    public static LatencyModel Linear(double fixedMs, double msPerToken) =>
        new([new LatencyPoint(1, fixedMs + msPerToken), new LatencyPoint(2, fixedMs + 2 * msPerToken)]);

    /// <summary>Through the given (tokens, ms) points.</summary>
    public static LatencyModel FromPoints(params (int Tokens, double Ms)[] points) =>
        new(points.Select(p => new LatencyPoint(p.Tokens, p.Ms)).ToArray());

    public override string ToString() => string.Join(", ", _points.Select(p => $"{p.Tokens}→{p.Ms:0.###}ms"));
}

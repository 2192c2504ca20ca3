namespace Fiddler.Actors.Scheduling;

/// <summary>
/// How long each host-resident expert's weights take to stream into the CPU kernel on this host, relative to the typical
/// one (the median): a scale of 1.5 reads at two thirds of the median speed. Some hosts back part of a process's memory
/// with slower DRAM (measured on lent H100 hosts: a third of the experts at ~80 GB/s against ~125 for the rest, the same
/// experts slow in every pass), and a decode layer's CPU lane on such an expert takes that much longer. With the scales
/// the router gives the slow ones to the PCIe lane and keeps the fast ones for the CPU (<see cref="ExpertLoad.CpuScale"/>).
/// The engine plans by them only where the host's memory is <see cref="Uneven"/>; elsewhere they would be two passes' noise.
/// </summary>
public sealed class HostReadScales
{
    /// <summary>Scales are clamped to this range: a single disturbed reading must not send an expert off the CPU for good.</summary>
    public const double MinScale = 0.5, MaxScale = 3;

    private readonly double[][] _scale;

    /// <param name="speeds">Each measured expert's read rate (any unit, &gt; 0), at most once per (layer, expert); experts
    /// not listed keep scale 1.</param>
    public HostReadScales(int layers, int experts, IReadOnlyList<(int Layer, int Expert, double Rate)> speeds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(layers, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        ArgumentNullException.ThrowIfNull(speeds);
        if (speeds.Count == 0) throw new ArgumentException("no expert was measured", nameof(speeds));
        _scale = Enumerable.Range(0, layers).Select(_ => Enumerable.Repeat(1.0, experts).ToArray()).ToArray();
        var seen = new HashSet<(int, int)>();
        foreach (var (l, e, rate) in speeds)
        {
            if ((uint)l >= (uint)layers || (uint)e >= (uint)experts)
                throw new ArgumentOutOfRangeException(nameof(speeds), $"expert ({l}, {e}) is outside {layers} layers × {experts} experts");
            if (!(rate > 0) || double.IsInfinity(rate))
                throw new ArgumentOutOfRangeException(nameof(speeds), $"expert ({l}, {e}): read rate {rate} is not a positive number");
            if (!seen.Add((l, e))) throw new ArgumentException($"expert ({l}, {e}) is measured twice", nameof(speeds));
        }
        var sorted = speeds.Select(s => s.Rate).Order().ToArray();
        int n = sorted.Length;
        ReferenceRate = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
        foreach (var (l, e, rate) in speeds) _scale[l][e] = Math.Clamp(ReferenceRate / rate, MinScale, MaxScale);
        Measured = n;
        var scales = speeds.Select(s => _scale[s.Layer][s.Expert]).ToArray();
        Slowest = scales.Max();
        SlowShare = scales.Count(x => x >= SlowAbove) / (double)n;
    }

    /// <summary>An expert at least this much slower than the median counts as slow in <see cref="SlowShare"/>.</summary>
    public const double SlowAbove = 1.2;

    /// <summary>The <see cref="SlowShare"/> from which the host's memory counts as uneven (<see cref="Uneven"/>).</summary>
    public const double UnevenFromShare = 0.05;

    /// <summary>
    /// Whether enough experts read slowly for the scales to be worth planning by: on the lent H100 hosts whose memory
    /// read alike, at most 1 % of the experts were 1.2× slower than the median (two passes' noise); on one whose memory
    /// did not, about a third. Below this the engine leaves the router on the calibrated time, as before.
    /// </summary>
    public bool Uneven => SlowShare >= UnevenFromShare;

    /// <summary>The median read rate of the measured experts, in the unit given (the scale-1 speed).</summary>
    public double ReferenceRate { get; }

    /// <summary>How many experts were measured.</summary>
    public int Measured { get; }

    /// <summary>The largest scale (the slowest expert against the median, clamped).</summary>
    public double Slowest { get; }

    /// <summary>The share of measured experts with a scale of at least <see cref="SlowAbove"/>.</summary>
    public double SlowShare { get; }

    /// <summary>Expert (<paramref name="layer"/>, <paramref name="expert"/>)'s scale; 1 for one not measured or out of range.</summary>
    public double Of(int layer, int expert) =>
        (uint)layer < (uint)_scale.Length && (uint)expert < (uint)_scale[layer].Length ? _scale[layer][expert] : 1;

    public override string ToString() =>
        $"{Measured} host experts, median {ReferenceRate:0.#}, slowest ×{Slowest:0.##}, {SlowShare:P0} at ≥ ×{SlowAbove} ({(Uneven ? "uneven" : "even")})";
}

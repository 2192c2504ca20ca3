using Fiddler.Actors.Protocols;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>
/// Engine totals since start, summed over the MoE layers (see <see cref="LayerStats"/>). Every count only grows, so
/// they are exported as counters; the hit rate is a gauge.
/// </summary>
/// <param name="Steps">Layer forward steps.</param>
/// <param name="ExpertsChosen">Experts the router picked (tokens × top-k).</param>
/// <param name="ExpertsResident">Picked experts that were already on the GPU.</param>
/// <param name="ExpertsOnCpu">Picked experts computed on the CPU lane.</param>
/// <param name="Transfers">Experts copied host → GPU.</param>
/// <param name="TransferBytes">Bytes those copies moved over PCIe.</param>
/// <param name="CpuExpertTime">Time spent in the CPU expert lane.</param>
/// <param name="LayerTime">Time spent in the layers (GPU work and waiting on the CPU lane).</param>
public sealed record EngineStatsSnapshot(long Steps, long ExpertsChosen, long ExpertsResident, long ExpertsOnCpu,
    long Transfers, long TransferBytes, TimeSpan CpuExpertTime, TimeSpan LayerTime)
{
    /// <summary>Fraction of picked experts found on the GPU (0 before any step).</summary>
    public double GpuHitRate => ExpertsChosen == 0 ? 0 : (double)ExpertsResident / ExpertsChosen;

    /// <summary>
    /// Sums <c>FiddlerRuntime.LayerStatsAsync()</c>. PCIe bytes are the layers' own <see cref="LayerStats.TransferredBytes"/>
    /// (split experts move only part of their weights, so transfers × expert size would overcount).
    /// </summary>
    public static EngineStatsSnapshot FromLayers(IEnumerable<LayerStats> layers)
    {
        long steps = 0, chosen = 0, resident = 0, cpu = 0, transfers = 0, bytes = 0;
        double cpuMs = 0, layerMs = 0;
        foreach (var l in layers)
        {
            steps += l.Steps;
            chosen += l.Chosen;
            resident += l.Resident;
            cpu += l.Cpu;
            transfers += l.Transfers;
            bytes += l.TransferredBytes;
            cpuMs += l.CpuLaneMs;
            layerMs += l.LayerMs;
        }
        return new(steps, chosen, resident, cpu, transfers, bytes,
            TimeSpan.FromMilliseconds(cpuMs), TimeSpan.FromMilliseconds(layerMs));
    }
}

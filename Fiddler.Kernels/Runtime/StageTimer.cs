using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// Optional per-stage wall-clock accounting (embed, attention, routing, experts, head). Off by default: then
/// <see cref="Stage"/> costs one branch. On, each stage synchronises the device at its end so GPU time lands in the
/// stage that queued it — that slows the run, so use it to find where time goes, not to measure throughput.
/// </summary>
public static class StageTimer
{
    private static readonly Dictionary<string, (double Ms, long Count)> Totals = new();
    private static Device? _syncDevice;

    public static bool Enabled { get; private set; }

    public static void Enable(Device device)
    {
        _syncDevice = device.type == DeviceType.CUDA ? device : null;
        Enabled = true;
        Totals.Clear();
    }

    public static void Disable() => Enabled = false;

    public static Scope Stage(string name) => Enabled ? new Scope(name, Stopwatch.GetTimestamp()) : default;

    /// <summary>(stage, total ms, count), largest first.</summary>
    public static IReadOnlyList<(string Stage, double Ms, long Count)> Snapshot() =>
        Totals.Select(kv => (kv.Key, kv.Value.Ms, kv.Value.Count)).OrderByDescending(t => t.Ms).ToList();

    public readonly struct Scope(string? name, long start) : IDisposable
    {
        public void Dispose()
        {
            if (name is null) return;
            if (_syncDevice is not null) cuda.synchronize(_syncDevice);
            double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            var (total, count) = Totals.GetValueOrDefault(name);
            Totals[name] = (total + ms, count + 1);
        }
    }
}

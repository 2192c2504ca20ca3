using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// Index tensors for expert gathers and scatters. At decode every index list is a single small number ([0] for the
/// token, [0] or [1] for its top-k slot); building each from a host array costs a synchronous host→device copy that
/// waits for all queued GPU work (including a streamed expert's weights). Those are kept on the device, made once.
/// Longer lists (prefill) go up from page-locked memory with a non-blocking copy, so the host never waits for the
/// device lane while it queues experts.
/// </summary>
public static class DeviceIndices
{
    private const int Cached = 64;
    private static readonly Dictionary<string, Tensor[]> PerDevice = new();

    /// <summary>An int64 index tensor on <paramref name="device"/>; a shared cached one for single values below 64
    /// (never dispose or modify those: they are detached from any dispose scope).</summary>
    public static Tensor Get(long[] values, Device device)
    {
        if (values.Length != 1 || values[0] is < 0 or >= Cached) return Upload(values, device);
        string key = device.ToString();
        Tensor[]? table;
        lock (PerDevice)
        {
            if (!PerDevice.TryGetValue(key, out table))
            {
                table = new Tensor[Cached];
                for (int i = 0; i < Cached; i++)
                {
                    table[i] = tensor(new long[] { i }, device: device);
                    table[i].DetachFromDisposeScope();
                }
                PerDevice[key] = table;
            }
        }
        return table[values[0]];
    }

    private static Tensor Upload(long[] values, Device device)
    {
        if (device.type != DeviceType.CUDA) return tensor(values, device: device);
        using var scope = NewDisposeScope();
        // The pinned block is not reused before the queued copy has read it (torch's host allocator records the copy).
        var host = tensor(values).pin_memory();
        return host.to(device, non_blocking: true).MoveToOuterDisposeScope();
    }
}

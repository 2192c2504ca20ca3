using System.Collections.Concurrent;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Cuda;

/// <summary>
/// Page-locks large host tensors where they are (cudaHostRegister) instead of copying them into torch's pinned pool.
/// Why: torch's pinned allocator rounds each block up to a power of two (a 112 MiB expert matrix takes 128 MiB, +14%
/// over 70 GB of experts), and the CPU expert kernel read pinned-pool memory at ~72 GB/s against ~121 GB/s from
/// torch's ordinary allocations (measured on the H100 host, 1-token expert: 4.9 ms vs 2.9 ms).
/// </summary>
public static class HostPinning
{
    private const long MinBytes = 2L << 20; // small blocks may share pages with other allocations: use torch's pool
    private static readonly ConcurrentDictionary<IntPtr, long> Registered = new();
    private static long s_fallbacks;
    private static string? s_lastFallbackReason;

    /// <summary>
    /// How many large tensors could not be registered in place and were copied into torch's pinned pool instead (since
    /// the process started), and why the latest could not. The CPU expert kernel reads pool memory slower; the engine
    /// reports what its own load added.
    /// </summary>
    public static (long Count, string? LastReason) Fallbacks => (Interlocked.Read(ref s_fallbacks), Volatile.Read(ref s_lastFallbackReason));

    /// <summary>A page-locked tensor of the given shape: registered in place when large, else torch's pin_memory.</summary>
    /// <param name="hugePages">Advise the memory into 2 MiB pages before it is registered (<see cref="HugePages"/>).</param>
    public static Tensor Empty(long[] shape, ScalarType dtype, bool hugePages = false)
    {
        var t = empty(shape, dtype, CPU);
        long bytes = t.NumberOfElements * t.ElementSize;
        if (bytes >= MinBytes && CudaRuntime.IsAvailable)
        {
            IntPtr p = TensorMemory.DataPtr(t);
            if (hugePages) HugePages.Advise(p, bytes); // before registering faults the pages in
            try
            {
                PinnedMemory.Register(p, bytes);
                Registered[p] = bytes;
                return t;
            }
            catch (CudaException e)
            {
                // e.g. a page already registered, or the driver's limit on locked memory: fall back to a copy into the
                // pinned pool (this memory is then freed), and count it for the engine's report
                if (hugePages) HugePages.Forget(p, bytes);
                Volatile.Write(ref s_lastFallbackReason, e.Message);
                Interlocked.Increment(ref s_fallbacks);
            }
        }
        using (t) return t.pin_memory();
    }

    /// <summary>Unregisters every registered parameter of <paramref name="module"/> (before the module frees them).</summary>
    public static void Release(nn.Module module)
    {
        // Every registration is dropped even if one unregister fails (a device fault): the first error is rethrown after.
        Exception? first = null;
        foreach (var p in module.parameters())
        {
            if (p.device_type != DeviceType.CPU) continue;
            IntPtr ptr = TensorMemory.DataPtr(p);
            if (Registered.TryRemove(ptr, out long bytes))
            {
                HugePages.Forget(ptr, bytes);
                try { PinnedMemory.Unregister(ptr); }
                catch (Exception e) { first ??= e; }
            }
        }
        if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }
}

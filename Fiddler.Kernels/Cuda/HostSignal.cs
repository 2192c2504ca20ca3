namespace Fiddler.Kernels.Cuda;

/// <summary>
/// A 32-bit counter in mapped, page-locked host memory that the device can wait on: <see cref="QueueWait"/> makes a
/// stream's later work wait (on the device) until the host has <see cref="Raise"/>d the counter to a value. This lets
/// the host queue work that needs a CPU result before the result exists, and go on. Values only grow (compared
/// wrap-around safe), so the word is never reset. No finalizer (CUDA may be torn down first): dispose it.
/// </summary>
public sealed unsafe class HostSignal : IDisposable
{
    private IntPtr _host;
    private readonly ulong _device;

    private HostSignal(IntPtr host, ulong device, int deviceIndex)
    {
        _host = host;
        _device = device;
        Device = deviceIndex;
    }

    public int Device { get; }

    /// <summary>A signal on <paramref name="device"/>, or null with <paramref name="reason"/> when the driver cannot wait on host memory.</summary>
    public static HostSignal? TryCreate(int device, out string reason)
    {
        reason = "";
        if (!CudaRuntime.IsAvailable) { reason = CudaRuntime.UnavailableReason ?? "no CUDA runtime"; return null; }
        if (!CudaDriver.IsAvailable) { reason = CudaDriver.UnavailableReason ?? "no CUDA driver API"; return null; }
        using var scope = CudaRuntime.UseDevice(device);
        IntPtr host = CudaRuntime.HostAlloc(sizeof(uint), CudaHostAllocFlags.Mapped | CudaHostAllocFlags.Portable);
        try
        {
            *(uint*)host = 0;
            var signal = new HostSignal(host, (ulong)CudaRuntime.HostGetDevicePointer(host), device);
            // Probe once: a wait that is already satisfied must queue and pass (some drivers refuse stream memory ops).
            signal.QueueWait(CudaDriver.LegacyStream, 0);
            CudaRuntime.StreamSynchronize(CudaRuntime.LegacyDefaultStream);
            return signal;
        }
        catch (Exception e) when (e is CudaException or CudaDriverException)
        {
            CudaRuntime.FreeHost(host);
            reason = e.Message;
            return null;
        }
    }

    /// <summary>The counter's value now (host read).</summary>
    public uint Value => Volatile.Read(ref *(uint*)Host);

    /// <summary>Work queued on <paramref name="stream"/> (a driver handle: <see cref="CudaDriver.LegacyStream"/> is torch's) after this call waits until the counter reaches <paramref name="value"/>.</summary>
    public void QueueWait(IntPtr stream, uint value)
    {
        using var scope = CudaRuntime.UseDevice(Device);
        CudaDriver.StreamWaitValue32(stream, _device, value, CudaDriver.WaitValueGeq);
    }

    /// <summary>
    /// Raises the counter to <paramref name="value"/> after every store this thread made before (the exchange is a full
    /// fence). Never lowers it: a late raise of an older value leaves a newer one in place (wrap-around compare).
    /// </summary>
    public void Raise(uint value)
    {
        ref uint word = ref *(uint*)Host;
        uint seen = Volatile.Read(ref word);
        while (unchecked((int)(value - seen)) > 0)
        {
            uint was = Interlocked.CompareExchange(ref word, value, seen);
            if (was == seen) return;
            seen = was;
        }
        Interlocked.MemoryBarrier();
    }

    private IntPtr Host => _host != IntPtr.Zero ? _host : throw new ObjectDisposedException(nameof(HostSignal));

    /// <summary>Frees the word. Nothing may still wait on it: raise it past every queued wait and let the device drain first.</summary>
    public void Dispose()
    {
        if (_host == IntPtr.Zero) return;
        IntPtr h = _host;
        _host = IntPtr.Zero;
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.FreeHost(h), "cudaFreeHost");
    }
}

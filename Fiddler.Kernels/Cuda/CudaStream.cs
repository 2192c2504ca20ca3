namespace Fiddler.Kernels.Cuda;

/// <summary>
/// An owned CUDA stream on one device. Non-blocking by default: it does not synchronise implicitly with the legacy
/// default stream where torch works, so order it against torch with <see cref="CudaEvent"/>s. No finalizer (CUDA may
/// already be torn down when finalizers run at exit): dispose it.
/// </summary>
public sealed unsafe class CudaStream : IDisposable
{
    private IntPtr _handle;

    private CudaStream(IntPtr handle, int device)
    {
        _handle = handle;
        Device = device;
    }

    /// <summary>Creates a stream on <paramref name="device"/> (flags: <see cref="CudaRuntime.StreamNonBlocking"/> or 0).</summary>
    public static CudaStream Create(int device, uint flags = CudaRuntime.StreamNonBlocking)
    {
        using var scope = CudaRuntime.UseDevice(device);
        return new CudaStream(CudaRuntime.StreamCreateWithFlags(flags), device);
    }

    public IntPtr Handle => _handle != IntPtr.Zero ? _handle : throw new ObjectDisposedException(nameof(CudaStream));

    public int Device { get; }

    /// <summary>Blocks the calling thread until everything queued on this stream is done.</summary>
    public void Synchronize() => CudaRuntime.StreamSynchronize(Handle);

    /// <summary>True when everything queued on this stream is done.</summary>
    public bool IsIdle => CudaRuntime.StreamQuery(Handle);

    /// <summary>Work queued on this stream from now on waits (on the device, not the host) for the event's last record.</summary>
    public void Wait(CudaEvent cudaEvent) => CudaRuntime.StreamWaitEvent(Handle, cudaEvent.Handle);

    /// <summary>Records <paramref name="cudaEvent"/> here: it completes when the work queued so far has.</summary>
    public void Record(CudaEvent cudaEvent) => cudaEvent.Record(Handle);

    public void Dispose()
    {
        if (_handle == IntPtr.Zero) return;
        IntPtr h = _handle;
        _handle = IntPtr.Zero;
        // Destroying a stream with pending work is allowed: CUDA releases it once the work is done.
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.StreamDestroy(h), "cudaStreamDestroy");
    }
}

/// <summary>An owned CUDA event. Ordering-only by default (timing disabled: cheapest); <see cref="CreateTiming"/> for timing.</summary>
public sealed unsafe class CudaEvent : IDisposable
{
    private IntPtr _handle;

    private CudaEvent(IntPtr handle, int device, bool timing)
    {
        _handle = handle;
        Device = device;
        HasTiming = timing;
    }

    /// <summary>An event for ordering (cudaEventDisableTiming).</summary>
    public static CudaEvent Create(int device) => Create(device, timing: false);

    /// <summary>An event that records a timestamp, for <see cref="ElapsedMilliseconds"/>.</summary>
    public static CudaEvent CreateTiming(int device) => Create(device, timing: true);

    /// <summary>
    /// An ordering event whose <see cref="Synchronize"/> sleeps instead of spinning (cudaEventBlockingSync): for host
    /// waits that must leave the CPU to other work (the CPU expert lane), at a few µs of extra wake-up latency.
    /// </summary>
    public static CudaEvent CreateBlocking(int device)
    {
        using var scope = CudaRuntime.UseDevice(device);
        return new CudaEvent(CudaRuntime.EventCreateWithFlags(CudaRuntime.EventBlockingSync | CudaRuntime.EventDisableTiming), device, false);
    }

    private static CudaEvent Create(int device, bool timing)
    {
        using var scope = CudaRuntime.UseDevice(device);
        return new CudaEvent(CudaRuntime.EventCreateWithFlags(timing ? CudaRuntime.EventDefault : CudaRuntime.EventDisableTiming), device, timing);
    }

    public IntPtr Handle => _handle != IntPtr.Zero ? _handle : throw new ObjectDisposedException(nameof(CudaEvent));

    public int Device { get; }

    public bool HasTiming { get; }

    /// <summary>Records on <paramref name="stream"/> (a handle; <see cref="CudaRuntime.LegacyDefaultStream"/> is torch's).</summary>
    public void Record(IntPtr stream) => CudaRuntime.EventRecord(Handle, stream);

    public void Record(CudaStream stream) => Record(stream.Handle);

    /// <summary>Records on the legacy default stream, i.e. after every torch op queued so far on the current device.</summary>
    public void RecordOnDefaultStream()
    {
        using var scope = CudaRuntime.UseDevice(Device);
        Record(CudaRuntime.LegacyDefaultStream);
    }

    /// <summary>Blocks the calling thread until the event's last record has completed.</summary>
    public void Synchronize() => CudaRuntime.EventSynchronize(Handle);

    /// <summary>True when the event's last record has completed (or it was never recorded).</summary>
    public bool IsComplete => CudaRuntime.EventQuery(Handle);

    /// <summary>Milliseconds from <paramref name="start"/> to <paramref name="end"/>; both timing events, both complete.</summary>
    public static float ElapsedMilliseconds(CudaEvent start, CudaEvent end) => CudaRuntime.EventElapsedTime(start.Handle, end.Handle);

    public void Dispose()
    {
        if (_handle == IntPtr.Zero) return;
        IntPtr h = _handle;
        _handle = IntPtr.Zero;
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.EventDestroy(h), "cudaEventDestroy");
    }
}

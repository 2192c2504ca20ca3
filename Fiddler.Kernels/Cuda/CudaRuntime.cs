using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Cuda;

/// <summary>cudaMemcpyKind.</summary>
public enum CudaMemcpyKind
{
    HostToHost = 0,
    HostToDevice = 1,
    DeviceToHost = 2,
    DeviceToDevice = 3,
    /// <summary>Direction inferred from the pointers (unified addressing).</summary>
    Default = 4,
}

/// <summary>cudaHostRegister flags.</summary>
[Flags]
public enum CudaHostRegisterFlags : uint
{
    Default = 0,
    /// <summary>Pinned for every CUDA context, not only the current one.</summary>
    Portable = 1,
    Mapped = 2,
    IoMemory = 4,
    /// <summary>The range is read-only for the device (needed for a read-only mapping such as a mmap'd checkpoint).</summary>
    ReadOnly = 8,
}

/// <summary>cudaHostAlloc flags.</summary>
[Flags]
public enum CudaHostAllocFlags : uint
{
    Default = 0,
    Portable = 1,
    Mapped = 2,
    WriteCombined = 4,
}

/// <summary>
/// The CUDA runtime API (libcudart) for what TorchSharp lacks: streams, events, async copies, pinned host memory.
/// <para>
/// Loading: lazily, on first use, from <see cref="CudaLibraryResolver.DefaultCandidates"/> — preferably the libcudart
/// libtorch already loaded, so this is the same runtime instance and the same (primary) CUDA context torch uses.
/// Initialise torch's CUDA first (<c>TorchRuntime.Initialize("cuda")</c>), so that library is in the process.
/// Without libcudart <see cref="IsAvailable"/> is false (never throws) and every other member throws
/// <see cref="CudaUnavailableException"/>.
/// </para>
/// <para>
/// Streams. TorchSharp never sets a current CUDA stream, so every torch op and copy runs on torch's default stream,
/// which is the legacy default stream (handle 0, <see cref="LegacyDefaultStream"/>): PyTorch is not built with
/// per-thread default streams, and we call the legacy (non-<c>_ptds</c>) entry points, so 0 means the same stream here.
/// A stream made with <see cref="StreamNonBlocking"/> does NOT synchronise implicitly with the legacy stream: work on it
/// overlaps torch's work, and any ordering between the two must be made explicit with events
/// (<see cref="StreamWaitEvent"/>). A blocking stream (flags 0) would serialise with every torch op instead.
/// </para>
/// <para>
/// Errors: every call checks its cudaError_t and throws <see cref="CudaException"/> (function name, error name and
/// text), after clearing the runtime's last-error slot so that torch's next launch check does not report our error as its own.
/// </para>
/// </summary>
public static unsafe class CudaRuntime
{
    /// <summary>cudaStreamNonBlocking.</summary>
    public const uint StreamNonBlocking = 1;
    /// <summary>cudaEventDefault (records timing).</summary>
    public const uint EventDefault = 0;
    /// <summary>cudaEventBlockingSync.</summary>
    public const uint EventBlockingSync = 1;
    /// <summary>cudaEventDisableTiming: cheapest event, for ordering only.</summary>
    public const uint EventDisableTiming = 2;

    /// <summary>The legacy default stream, where TorchSharp's ops run (see the class remarks).</summary>
    public static readonly IntPtr LegacyDefaultStream = IntPtr.Zero;

    private static readonly Lazy<(CudaLibrary? Library, string Reason)> Loaded = new(() =>
    {
        try
        {
            var lib = CudaLibrary.TryLoad(CudaLibraryResolver.DefaultCandidates(), out string reason);
            return (lib, reason);
        }
        catch (Exception e) { return (null, $"loading libcudart failed: {e.Message}"); }
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Whether libcudart is loaded (loading it now if not yet tried). Never throws. Says nothing about GPUs present.</summary>
    public static bool IsAvailable => Loaded.Value.Library is not null;

    /// <summary>Why <see cref="IsAvailable"/> is false (what each candidate did), or null when available.</summary>
    public static string? UnavailableReason => Loaded.Value.Library is null ? Loaded.Value.Reason : null;

    /// <summary>The loaded library; throws <see cref="CudaUnavailableException"/> when there is none.</summary>
    public static CudaLibrary Library => Loaded.Value.Library ?? throw new CudaUnavailableException(
        "the CUDA runtime library (libcudart) is not available in this process: " + Loaded.Value.Reason + ". " +
        "Initialise CUDA through TorchRuntime.Initialize(\"cuda\") first on a host with PyTorch+CUDA (deploy/bundle.sh), " +
        $"or set {CudaLibraryResolver.ExplicitPathEnvironmentVariable} to the libcudart.so.N file.");

    /// <summary>Throws <see cref="CudaException"/> naming <paramref name="function"/> unless <paramref name="error"/> is cudaSuccess.</summary>
    public static void Check(int error, string function)
    {
        if (error == CudaErrors.Success) return;
        ClearLastError();
        throw new CudaException(function, error);
    }

    /// <summary>Resets the runtime's last-error slot (a no-op without the library). Sticky errors stay, as CUDA defines.</summary>
    public static void ClearLastError()
    {
        var lib = Loaded.IsValueCreated ? Loaded.Value.Library : null;
        if (lib is not null) _ = lib.GetLastError();
    }

    /// <summary>Name and message from the live library; false when it is not loaded or does not know the code.</summary>
    public static bool TryGetErrorText(int code, out string? name, out string? message)
    {
        name = message = null;
        var lib = Loaded.IsValueCreated ? Loaded.Value.Library : null;
        if (lib is null) return false;
        name = Marshal.PtrToStringUTF8((IntPtr)lib.GetErrorName(code));
        message = Marshal.PtrToStringUTF8((IntPtr)lib.GetErrorString(code));
        if (name is null || name.Contains("unrecognized", StringComparison.OrdinalIgnoreCase))
        {
            name = message = null;
            return false;
        }
        return true;
    }

    public static int GetDeviceCount()
    {
        int n;
        Check(Library.GetDeviceCount(&n), "cudaGetDeviceCount");
        return n;
    }

    public static int GetDevice()
    {
        int d;
        Check(Library.GetDevice(&d), "cudaGetDevice");
        return d;
    }

    public static void SetDevice(int device) => Check(Library.SetDevice(device), "cudaSetDevice");

    /// <summary>Makes <paramref name="device"/> current until the scope is disposed (no calls when it already is).</summary>
    public static DeviceScope UseDevice(int device)
    {
        int previous = GetDevice();
        if (previous != device) SetDevice(device);
        return new DeviceScope(previous, device);
    }

    /// <summary>
    /// Restores the previous current device, unless that device's context was never created: a thread that never chose
    /// a device reports device 0, and restoring it would create a context on GPU 0 for an engine on cuda:1 (memory on a
    /// GPU it does not use, or a failure when another process holds GPU 0 exclusively). Every CUDA call here scopes its
    /// own device, so leaving such a thread on the scope's device changes nothing for them.
    /// </summary>
    public readonly struct DeviceScope(int previous, int current) : IDisposable
    {
        public void Dispose()
        {
            if (previous != current && CudaDriver.PrimaryContextActive(previous) != false) SetDevice(previous);
        }
    }

    /// <summary>e.g. 13000 for CUDA 13.0.</summary>
    public static int RuntimeVersion()
    {
        int v;
        Check(Library.RuntimeGetVersion(&v), "cudaRuntimeGetVersion");
        return v;
    }

    public static int DriverVersion()
    {
        int v;
        Check(Library.DriverGetVersion(&v), "cudaDriverGetVersion");
        return v;
    }

    public static void DeviceSynchronize() => Check(Library.DeviceSynchronize(), "cudaDeviceSynchronize");

    /// <summary>The current device's free and total memory in bytes (free counts what every process, this one's CUDA
    /// context and torch's cached blocks included, has not taken).</summary>
    public static (long Free, long Total) MemGetInfo()
    {
        nuint free, total;
        Check(Library.MemGetInfo(&free, &total), "cudaMemGetInfo");
        return ((long)free, (long)total);
    }

    /// <summary>
    /// Bytes in use on <paramref name="device"/> (total − free: every process's, this one's CUDA context and torch's
    /// cached blocks included), or null off CUDA or without libcudart. Creates the device's primary context if needed.
    /// </summary>
    public static long? DeviceBytesInUse(TorchSharp.torch.Device device)
    {
        if (device.type != TorchSharp.DeviceType.CUDA || !IsAvailable) return null;
        using var on = UseDevice(device.index < 0 ? 0 : device.index);
        var (free, total) = MemGetInfo();
        return total - free;
    }

    /// <summary>
    /// The device's marketing name (e.g. "NVIDIA H100 80GB HBM3"), or null where libcudart exports neither
    /// cudaGetDeviceProperties_v2 nor cudaGetDeviceProperties. The properties struct (~1 KB in CUDA 12/13) starts with
    /// the name; it is read into a buffer with room to spare.
    /// </summary>
    public static string? DeviceName(int device)
    {
        if (Library.GetDeviceProperties == null) return null;
        byte* props = stackalloc byte[8192];
        Check(Library.GetDeviceProperties(props, device), "cudaGetDeviceProperties");
        var name = new ReadOnlySpan<byte>(props, 256);
        int end = name.IndexOf((byte)0);
        return System.Text.Encoding.UTF8.GetString(end >= 0 ? name[..end] : name).Trim();
    }

    /// <summary>
    /// What a calibration cache names the device by: the CUDA device's name (<see cref="DeviceName"/>; device index −1
    /// is the current device) where the runtime gives one, else the device's string ("cpu", "cuda"). Never throws.
    /// </summary>
    public static string DeviceLabel(TorchSharp.torch.Device device)
    {
        if (device.type != TorchSharp.DeviceType.CUDA) return device.ToString();
        try
        {
            return IsAvailable && DeviceName(device.index >= 0 ? device.index : GetDevice()) is { Length: > 0 } name ? name : device.ToString();
        }
        catch (Exception e) when (e is CudaException or CudaUnavailableException)
        {
            return device.ToString();
        }
    }

    public static IntPtr StreamCreateWithFlags(uint flags)
    {
        nint s;
        Check(Library.StreamCreateWithFlags(&s, flags), "cudaStreamCreateWithFlags");
        return s;
    }

    public static void StreamDestroy(IntPtr stream) => Check(Library.StreamDestroy(stream), "cudaStreamDestroy");

    public static void StreamSynchronize(IntPtr stream) => Check(Library.StreamSynchronize(stream), "cudaStreamSynchronize");

    /// <summary>True when all work queued on the stream is done; false while some is pending.</summary>
    public static bool StreamQuery(IntPtr stream) => ReadyOrNot(Library.StreamQuery(stream), "cudaStreamQuery");

    /// <summary>Work queued on <paramref name="stream"/> after this call waits (on the device) for the event's last record.</summary>
    public static void StreamWaitEvent(IntPtr stream, IntPtr cudaEvent) =>
        Check(Library.StreamWaitEvent(stream, cudaEvent, 0), "cudaStreamWaitEvent");

    public static IntPtr EventCreateWithFlags(uint flags)
    {
        nint e;
        Check(Library.EventCreateWithFlags(&e, flags), "cudaEventCreateWithFlags");
        return e;
    }

    public static void EventRecord(IntPtr cudaEvent, IntPtr stream) => Check(Library.EventRecord(cudaEvent, stream), "cudaEventRecord");

    public static void EventSynchronize(IntPtr cudaEvent) => Check(Library.EventSynchronize(cudaEvent), "cudaEventSynchronize");

    /// <summary>True when the work before the event's last record is done (or it was never recorded).</summary>
    public static bool EventQuery(IntPtr cudaEvent) => ReadyOrNot(Library.EventQuery(cudaEvent), "cudaEventQuery");

    /// <summary>Milliseconds between two completed timing events (resolution about 0.5 µs).</summary>
    public static float EventElapsedTime(IntPtr start, IntPtr end)
    {
        float ms;
        Check(Library.EventElapsedTime(&ms, start, end), "cudaEventElapsedTime");
        return ms;
    }

    public static void EventDestroy(IntPtr cudaEvent) => Check(Library.EventDestroy(cudaEvent), "cudaEventDestroy");

    /// <summary>
    /// Queues a copy on <paramref name="stream"/> and returns. Truly asynchronous only from page-locked host memory;
    /// from pageable memory the runtime stages it and the call returns only after the source was read.
    /// </summary>
    public static void MemcpyAsync(IntPtr dst, IntPtr src, long bytes, CudaMemcpyKind kind, IntPtr stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        Check(Library.MemcpyAsync(dst, src, (nuint)bytes, (int)kind, stream), "cudaMemcpyAsync");
    }

    /// <summary>
    /// Queues a strided copy of <paramref name="height"/> rows of <paramref name="widthBytes"/> each, rows
    /// <paramref name="srcPitch"/> bytes apart in the source and <paramref name="dstPitch"/> apart in the destination
    /// (e.g. a column block of a row-major matrix). Asynchronous from page-locked memory, as <see cref="MemcpyAsync"/>.
    /// </summary>
    public static void Memcpy2DAsync(IntPtr dst, long dstPitch, IntPtr src, long srcPitch, long widthBytes, long height,
        CudaMemcpyKind kind, IntPtr stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(widthBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(height);
        if (dstPitch < widthBytes || srcPitch < widthBytes) throw new ArgumentException($"pitches {dstPitch}/{srcPitch} are below the row width {widthBytes}");
        Check(Library.Memcpy2DAsync(dst, (nuint)dstPitch, src, (nuint)srcPitch, (nuint)widthBytes, (nuint)height, (int)kind, stream), "cudaMemcpy2DAsync");
    }

    public static void HostRegister(IntPtr ptr, long bytes, CudaHostRegisterFlags flags) =>
        Check(Library.HostRegister(ptr, (nuint)bytes, (uint)flags), "cudaHostRegister");

    public static void HostUnregister(IntPtr ptr) => Check(Library.HostUnregister(ptr), "cudaHostUnregister");

    public static IntPtr HostAlloc(long bytes, CudaHostAllocFlags flags)
    {
        nint p;
        Check(Library.HostAlloc(&p, (nuint)bytes, (uint)flags), "cudaHostAlloc");
        return p;
    }

    public static void FreeHost(IntPtr ptr) => Check(Library.FreeHost(ptr), "cudaFreeHost");

    /// <summary>The device address of mapped page-locked host memory (<see cref="CudaHostAllocFlags.Mapped"/>).</summary>
    public static IntPtr HostGetDevicePointer(IntPtr hostPtr)
    {
        nint d;
        Check(Library.HostGetDevicePointer(&d, hostPtr, 0), "cudaHostGetDevicePointer");
        return d;
    }

    private static bool ReadyOrNot(int error, string function)
    {
        if (error == CudaErrors.Success) return true;
        if (error == CudaErrors.NotReady)
        {
            ClearLastError(); // as PyTorch does: not-ready is not an error and must not linger
            return false;
        }
        Check(error, function);
        return false;
    }

    /// <summary>For Dispose paths: errors meaning the runtime or context is already gone (process exit) are ignored.</summary>
    internal static void CheckUnlessShuttingDown(int error, string function)
    {
        if (error is CudaErrors.CudartUnloading or CudaErrors.ContextIsDestroyed)
        {
            ClearLastError();
            return;
        }
        Check(error, function);
    }
}

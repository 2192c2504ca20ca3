using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Cuda;

/// <summary>
/// The few CUDA driver API entry points the runtime API does not offer, from the driver library (libcuda.so.1) that
/// libcudart has already loaded into the process. Optional: without it (no driver, or an old one) <see cref="IsAvailable"/>
/// is false and callers use a host-side fallback. The driver uses the calling thread's current context; the runtime's
/// <see cref="CudaRuntime.UseDevice"/> makes the device's primary context (torch's) current first.
/// </summary>
public static unsafe class CudaDriver
{
    /// <summary>CU_STREAM_LEGACY: the legacy default stream, where TorchSharp's ops run.</summary>
    public static readonly IntPtr LegacyStream = 1;

    /// <summary>CU_STREAM_WAIT_VALUE_GEQ: wait until (int32)(*addr − value) ≥ 0, i.e. wrap-around safe for counters.</summary>
    public const uint WaitValueGeq = 0;

    private sealed class Entry(delegate* unmanaged<nint, ulong, uint, uint, int> waitValue32, delegate* unmanaged<int, byte**, int> errorName)
    {
        public readonly delegate* unmanaged<nint, ulong, uint, uint, int> StreamWaitValue32 = waitValue32;
        public readonly delegate* unmanaged<int, byte**, int> GetErrorName = errorName;
        // Optional: loading PTX and launching a kernel (HostSignal's spin-wait kernel).
        public delegate* unmanaged<nint*, byte*, int> ModuleLoadData;
        public delegate* unmanaged<nint*, nint, byte*, int> ModuleGetFunction;
        public delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> LaunchKernel;
        // Optional: whether a device's primary context exists (CudaRuntime.DeviceScope restores only to such a device).
        public delegate* unmanaged<int*, int, int> DeviceGet;
        public delegate* unmanaged<int, uint*, int*, int> PrimaryCtxGetState;
    }

    private static readonly Lazy<(Entry? Entry, string Reason)> Loaded = new(() =>
    {
        try
        {
            if (!NativeLibrary.TryLoad("libcuda.so.1", out IntPtr handle)) return (null, "libcuda.so.1 is not loadable");
            // The _v2 names are the current ABI (CUDA 12+); the plain names are kept for old binaries.
            if (!NativeLibrary.TryGetExport(handle, "cuStreamWaitValue32_v2", out IntPtr wait))
                return (null, "libcuda.so.1 lacks cuStreamWaitValue32_v2 (driver older than CUDA 11.7)");
            NativeLibrary.TryGetExport(handle, "cuGetErrorName", out IntPtr name);
            var entry = new Entry((delegate* unmanaged<nint, ulong, uint, uint, int>)wait, (delegate* unmanaged<int, byte**, int>)name);
            if (NativeLibrary.TryGetExport(handle, "cuModuleLoadData", out IntPtr load)
                && NativeLibrary.TryGetExport(handle, "cuModuleGetFunction", out IntPtr get)
                && NativeLibrary.TryGetExport(handle, "cuLaunchKernel", out IntPtr launch))
            {
                entry.ModuleLoadData = (delegate* unmanaged<nint*, byte*, int>)load;
                entry.ModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)get;
                entry.LaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)launch;
            }
            if (NativeLibrary.TryGetExport(handle, "cuDeviceGet", out IntPtr deviceGet)
                && NativeLibrary.TryGetExport(handle, "cuDevicePrimaryCtxGetState", out IntPtr ctxState))
            {
                entry.DeviceGet = (delegate* unmanaged<int*, int, int>)deviceGet;
                entry.PrimaryCtxGetState = (delegate* unmanaged<int, uint*, int*, int>)ctxState;
            }
            return (entry, "");
        }
        catch (Exception e) { return (null, $"loading libcuda.so.1 failed: {e.Message}"); }
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Whether the driver entry points are there (loading them now if not yet tried). Never throws.</summary>
    public static bool IsAvailable => Loaded.Value.Entry is not null;

    /// <summary>Why <see cref="IsAvailable"/> is false, or null.</summary>
    public static string? UnavailableReason => Loaded.Value.Entry is null ? Loaded.Value.Reason : null;

    private static Entry Driver => Loaded.Value.Entry ?? throw new CudaUnavailableException("the CUDA driver API is not available: " + Loaded.Value.Reason);

    /// <summary>
    /// cuStreamWaitValue32: work queued on <paramref name="stream"/> after this call waits, on the device, until the
    /// 32-bit word at device address <paramref name="address"/> satisfies <paramref name="flags"/> against
    /// <paramref name="value"/>. The host does not block.
    /// </summary>
    public static void StreamWaitValue32(IntPtr stream, ulong address, uint value, uint flags = WaitValueGeq) =>
        Check(Driver.StreamWaitValue32(stream, address, value, flags), "cuStreamWaitValue32");

    /// <summary>Whether kernels can be loaded from PTX and launched (<see cref="LoadFunction"/>, <see cref="Launch"/>).</summary>
    public static bool CanLaunchKernels => Loaded.Value.Entry is { } e && e.LaunchKernel != null;

    /// <summary>Loads <paramref name="ptx"/> into the current context (the driver compiles it for this GPU) and returns
    /// its kernel <paramref name="name"/> (a CUfunction; the module lives as long as the context).</summary>
    public static IntPtr LoadFunction(string ptx, string name)
    {
        if (!CanLaunchKernels) throw new CudaUnavailableException("the CUDA driver API cannot load kernels here");
        byte[] image = System.Text.Encoding.ASCII.GetBytes(ptx + "\0");
        byte[] entry = System.Text.Encoding.ASCII.GetBytes(name + "\0");
        nint module = 0, function = 0;
        fixed (byte* p = image) Check(Driver.ModuleLoadData(&module, p), "cuModuleLoadData");
        fixed (byte* n = entry) Check(Driver.ModuleGetFunction(&function, module, n), "cuModuleGetFunction");
        return function;
    }

    /// <summary>cuLaunchKernel on one block of <paramref name="threads"/> threads; <paramref name="args"/> point at each parameter's value.</summary>
    public static void Launch(IntPtr function, IntPtr stream, uint threads, void** args) =>
        Check(Driver.LaunchKernel(function, 1, 1, 1, threads, 1, 1, 0, stream, args, null), "cuLaunchKernel");

    /// <summary>
    /// Whether device <paramref name="ordinal"/>'s primary context is active; null when the driver cannot say. Making a
    /// device current (cudaSetDevice) creates its context: on a GPU nothing here uses, that costs its memory, and fails
    /// when another process holds it in exclusive mode.
    /// </summary>
    public static bool? PrimaryContextActive(int ordinal)
    {
        if (Loaded.Value.Entry is not { } e || e.DeviceGet == null || e.PrimaryCtxGetState == null) return null;
        int device;
        uint flags;
        int active;
        if (e.DeviceGet(&device, ordinal) != 0 || e.PrimaryCtxGetState(device, &flags, &active) != 0) return null;
        return active != 0;
    }

    private static void Check(int result, string function)
    {
        if (result == 0) return;
        string name = $"CUresult {result}";
        if (Driver.GetErrorName != null)
        {
            byte* p = null;
            if (Driver.GetErrorName(result, &p) == 0 && p != null) name = Marshal.PtrToStringUTF8((IntPtr)p) ?? name;
        }
        throw new CudaDriverException(function, result, $"{function} failed: {name}");
    }
}

/// <summary>A CUDA driver API call returned an error (<see cref="Code"/> is its CUresult).</summary>
public sealed class CudaDriverException(string function, int code, string message) : Exception(message)
{
    public string Function { get; } = function;
    public int Code { get; } = code;
}

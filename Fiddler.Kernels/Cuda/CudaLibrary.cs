using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Cuda;

/// <summary>
/// One loaded libcudart and the entry points this project uses, as unmanaged function pointers resolved once.
/// All are the legacy-stream variants (not the <c>_ptsz</c>/<c>_ptds</c> per-thread ones), so stream handle 0 means the
/// legacy default stream, the one TorchSharp's ops run on. Use through <see cref="CudaRuntime"/>.
/// </summary>
public sealed unsafe class CudaLibrary
{
    /// <summary>Every export needed; a library missing one is rejected.</summary>
    public static readonly IReadOnlyList<string> RequiredExports =
    [
        "cudaGetDeviceCount", "cudaSetDevice", "cudaGetDevice", "cudaDriverGetVersion", "cudaRuntimeGetVersion",
        "cudaStreamCreateWithFlags", "cudaStreamDestroy", "cudaStreamSynchronize", "cudaStreamQuery", "cudaStreamWaitEvent",
        "cudaEventCreateWithFlags", "cudaEventRecord", "cudaEventSynchronize", "cudaEventQuery", "cudaEventElapsedTime",
        "cudaEventDestroy", "cudaMemcpyAsync", "cudaMemcpy2DAsync", "cudaHostRegister", "cudaHostUnregister", "cudaHostAlloc", "cudaFreeHost", "cudaHostGetDevicePointer",
        "cudaGetErrorString", "cudaGetErrorName", "cudaGetLastError", "cudaDeviceSynchronize", "cudaMemGetInfo",
    ];

    internal readonly delegate* unmanaged<int*, int> GetDeviceCount;
    internal readonly delegate* unmanaged<int, int> SetDevice;
    internal readonly delegate* unmanaged<int*, int> GetDevice;
    internal readonly delegate* unmanaged<int*, int> DriverGetVersion;
    internal readonly delegate* unmanaged<int*, int> RuntimeGetVersion;
    internal readonly delegate* unmanaged<nint*, uint, int> StreamCreateWithFlags;
    internal readonly delegate* unmanaged<nint, int> StreamDestroy;
    internal readonly delegate* unmanaged<nint, int> StreamSynchronize;
    internal readonly delegate* unmanaged<nint, int> StreamQuery;
    internal readonly delegate* unmanaged<nint, nint, uint, int> StreamWaitEvent;
    internal readonly delegate* unmanaged<nint*, uint, int> EventCreateWithFlags;
    internal readonly delegate* unmanaged<nint, nint, int> EventRecord;
    internal readonly delegate* unmanaged<nint, int> EventSynchronize;
    internal readonly delegate* unmanaged<nint, int> EventQuery;
    internal readonly delegate* unmanaged<float*, nint, nint, int> EventElapsedTime;
    internal readonly delegate* unmanaged<nint, int> EventDestroy;
    internal readonly delegate* unmanaged<nint, nint, nuint, int, nint, int> MemcpyAsync;
    internal readonly delegate* unmanaged<nint, nuint, nint, nuint, nuint, nuint, int, nint, int> Memcpy2DAsync;
    internal readonly delegate* unmanaged<nint, nuint, uint, int> HostRegister;
    internal readonly delegate* unmanaged<nint, int> HostUnregister;
    internal readonly delegate* unmanaged<nint*, nuint, uint, int> HostAlloc;
    internal readonly delegate* unmanaged<nint, int> FreeHost;
    internal readonly delegate* unmanaged<nint*, nint, uint, int> HostGetDevicePointer;
    internal readonly delegate* unmanaged<int, byte*> GetErrorString;
    internal readonly delegate* unmanaged<int, byte*> GetErrorName;
    internal readonly delegate* unmanaged<int> GetLastError;
    internal readonly delegate* unmanaged<int> DeviceSynchronize;
    internal readonly delegate* unmanaged<nuint*, nuint*, int> MemGetInfo;
    /// <summary>Optional (null when absent): cudaGetDeviceProperties_v2 (CUDA 12), else cudaGetDeviceProperties (CUDA 13
    /// has only this name; older libraries have it with an older struct). Every layout starts with the name (char[256]).</summary>
    internal readonly delegate* unmanaged<byte*, int, int> GetDeviceProperties;

    private CudaLibrary(IntPtr handle, string candidate, bool wasAlreadyMapped, Dictionary<string, IntPtr> e)
    {
        Handle = handle;
        Candidate = candidate;
        GetDeviceCount = (delegate* unmanaged<int*, int>)e["cudaGetDeviceCount"];
        SetDevice = (delegate* unmanaged<int, int>)e["cudaSetDevice"];
        GetDevice = (delegate* unmanaged<int*, int>)e["cudaGetDevice"];
        DriverGetVersion = (delegate* unmanaged<int*, int>)e["cudaDriverGetVersion"];
        RuntimeGetVersion = (delegate* unmanaged<int*, int>)e["cudaRuntimeGetVersion"];
        StreamCreateWithFlags = (delegate* unmanaged<nint*, uint, int>)e["cudaStreamCreateWithFlags"];
        StreamDestroy = (delegate* unmanaged<nint, int>)e["cudaStreamDestroy"];
        StreamSynchronize = (delegate* unmanaged<nint, int>)e["cudaStreamSynchronize"];
        StreamQuery = (delegate* unmanaged<nint, int>)e["cudaStreamQuery"];
        StreamWaitEvent = (delegate* unmanaged<nint, nint, uint, int>)e["cudaStreamWaitEvent"];
        EventCreateWithFlags = (delegate* unmanaged<nint*, uint, int>)e["cudaEventCreateWithFlags"];
        EventRecord = (delegate* unmanaged<nint, nint, int>)e["cudaEventRecord"];
        EventSynchronize = (delegate* unmanaged<nint, int>)e["cudaEventSynchronize"];
        EventQuery = (delegate* unmanaged<nint, int>)e["cudaEventQuery"];
        EventElapsedTime = (delegate* unmanaged<float*, nint, nint, int>)e["cudaEventElapsedTime"];
        EventDestroy = (delegate* unmanaged<nint, int>)e["cudaEventDestroy"];
        MemcpyAsync = (delegate* unmanaged<nint, nint, nuint, int, nint, int>)e["cudaMemcpyAsync"];
        Memcpy2DAsync = (delegate* unmanaged<nint, nuint, nint, nuint, nuint, nuint, int, nint, int>)e["cudaMemcpy2DAsync"];
        HostRegister = (delegate* unmanaged<nint, nuint, uint, int>)e["cudaHostRegister"];
        HostUnregister = (delegate* unmanaged<nint, int>)e["cudaHostUnregister"];
        HostAlloc = (delegate* unmanaged<nint*, nuint, uint, int>)e["cudaHostAlloc"];
        FreeHost = (delegate* unmanaged<nint, int>)e["cudaFreeHost"];
        HostGetDevicePointer = (delegate* unmanaged<nint*, nint, uint, int>)e["cudaHostGetDevicePointer"];
        GetErrorString = (delegate* unmanaged<int, byte*>)e["cudaGetErrorString"];
        GetErrorName = (delegate* unmanaged<int, byte*>)e["cudaGetErrorName"];
        GetLastError = (delegate* unmanaged<int>)e["cudaGetLastError"];
        DeviceSynchronize = (delegate* unmanaged<int>)e["cudaDeviceSynchronize"];
        MemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)e["cudaMemGetInfo"];
        if (NativeLibrary.TryGetExport(handle, "cudaGetDeviceProperties_v2", out IntPtr props)
            || NativeLibrary.TryGetExport(handle, "cudaGetDeviceProperties", out props))
            GetDeviceProperties = (delegate* unmanaged<byte*, int, int>)props;
        Path = ProcessMaps.FileAt(e["cudaGetDeviceCount"]) ?? candidate;
        WasAlreadyMapped = wasAlreadyMapped;
    }

    public IntPtr Handle { get; }

    /// <summary>The candidate string that loaded (a path or a soname).</summary>
    public string Candidate { get; }

    /// <summary>The file actually mapped (from /proc/self/maps), else <see cref="Candidate"/>.</summary>
    public string Path { get; }

    /// <summary>True when this file was already in the process before we loaded it: libtorch's own copy, shared.</summary>
    public bool WasAlreadyMapped { get; }

    /// <summary>
    /// Tries each candidate in order; returns the first that loads and has every <see cref="RequiredExports"/>, else
    /// null with <paramref name="reason"/> saying what each candidate did. Never throws.
    /// </summary>
    public static CudaLibrary? TryLoad(IEnumerable<string> candidates, out string reason)
    {
        var notes = new List<string>();
        var mappedBefore = new HashSet<string>(ProcessMaps.MappedFiles(), StringComparer.Ordinal);
        foreach (var candidate in candidates)
        {
            IntPtr handle;
            try
            {
                if (!NativeLibrary.TryLoad(candidate, out handle))
                {
                    notes.Add($"{candidate}: not loadable");
                    continue;
                }
            }
            catch (Exception e) when (e is ArgumentException or BadImageFormatException)
            {
                notes.Add($"{candidate}: {e.Message}");
                continue;
            }
            var exports = new Dictionary<string, IntPtr>(StringComparer.Ordinal);
            var missing = new List<string>();
            foreach (var name in RequiredExports)
            {
                // Plain names only: a "_v2" variant may have another signature, so never substitute it silently.
                if (NativeLibrary.TryGetExport(handle, name, out IntPtr p)) exports[name] = p;
                else missing.Add(name);
            }
            if (missing.Count > 0)
            {
                notes.Add($"{candidate}: lacks {string.Join(", ", missing)}");
                NativeLibrary.Free(handle); // drops only our reference
                continue;
            }
            string? file = ProcessMaps.FileAt(exports["cudaGetDeviceCount"]);
            reason = "";
            return new CudaLibrary(handle, candidate, file is not null && mappedBefore.Contains(file), exports);
        }
        reason = notes.Count == 0 ? "no candidate paths" : string.Join("; ", notes);
        return null;
    }
}

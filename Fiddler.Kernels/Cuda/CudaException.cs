namespace Fiddler.Kernels.Cuda;

/// <summary>A CUDA runtime call returned an error. <see cref="Function"/> is the cudart function, <see cref="Code"/> its cudaError_t.</summary>
public class CudaException : Exception
{
    public CudaException(string function, int code)
        : base($"{function} failed: {CudaErrors.Describe(code)}")
    {
        Function = function;
        Code = code;
    }

    public string Function { get; }

    /// <summary>The cudaError_t value (0 is success and never thrown).</summary>
    public int Code { get; }

    /// <summary>The enum name, e.g. "cudaErrorInvalidValue".</summary>
    public string ErrorName => CudaErrors.Name(Code);
}

/// <summary>
/// The CUDA runtime library (libcudart) could not be found or lacks the functions needed, so nothing CUDA-specific
/// beyond TorchSharp's own ops can run. The message lists what was tried.
/// </summary>
public sealed class CudaUnavailableException(string message) : NotSupportedException(message);

/// <summary>
/// cudaError_t names and messages. With libcudart loaded they come from cudaGetErrorName / cudaGetErrorString; without
/// it (or for a code it does not know) from a table of the codes this project can meet, copied from CUDA's
/// driver_types.h (values stable since CUDA 10; checked against the live library by <c>fiddler cuda-selftest</c>).
/// </summary>
public static class CudaErrors
{
    public const int Success = 0;
    public const int InvalidValue = 1;
    public const int MemoryAllocation = 2;
    public const int InitializationError = 3;
    public const int CudartUnloading = 4;
    public const int InvalidMemcpyDirection = 21;
    public const int StubLibrary = 34;
    public const int InsufficientDriver = 35;
    public const int CallRequiresNewerDriver = 36;
    public const int DevicesUnavailable = 46;
    public const int NoDevice = 100;
    public const int InvalidDevice = 101;
    public const int DeviceNotLicensed = 102;
    public const int DeviceUninitialized = 201;
    public const int InvalidResourceHandle = 400;
    public const int IllegalState = 401;
    public const int NotReady = 600;
    public const int IllegalAddress = 700;
    public const int LaunchOutOfResources = 701;
    public const int LaunchTimeout = 702;
    public const int PeerAccessAlreadyEnabled = 704;
    public const int ContextIsDestroyed = 709;
    public const int HostMemoryAlreadyRegistered = 712;
    public const int HostMemoryNotRegistered = 713;
    public const int LaunchFailure = 719;
    public const int NotPermitted = 800;
    public const int NotSupported = 801;
    public const int Unknown = 999;

    /// <summary>Name and message for each code in the table (the messages are cudart 12/13's).</summary>
    public static readonly IReadOnlyDictionary<int, (string Name, string Message)> Known = new Dictionary<int, (string, string)>
    {
        [Success] = ("cudaSuccess", "no error"),
        [InvalidValue] = ("cudaErrorInvalidValue", "invalid argument"),
        [MemoryAllocation] = ("cudaErrorMemoryAllocation", "out of memory"),
        [InitializationError] = ("cudaErrorInitializationError", "initialization error"),
        [CudartUnloading] = ("cudaErrorCudartUnloading", "driver shutting down"),
        [InvalidMemcpyDirection] = ("cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"),
        [StubLibrary] = ("cudaErrorStubLibrary", "CUDA driver is a stub library"),
        [InsufficientDriver] = ("cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version"),
        [CallRequiresNewerDriver] = ("cudaErrorCallRequiresNewerDriver", "API call is not supported in the installed CUDA driver"),
        [DevicesUnavailable] = ("cudaErrorDevicesUnavailable", "CUDA-capable device(s) is/are busy or unavailable"),
        [NoDevice] = ("cudaErrorNoDevice", "no CUDA-capable device is detected"),
        [InvalidDevice] = ("cudaErrorInvalidDevice", "invalid device ordinal"),
        [DeviceNotLicensed] = ("cudaErrorDeviceNotLicensed", "device doesn't have valid Grid license"),
        [DeviceUninitialized] = ("cudaErrorDeviceUninitialized", "invalid device context"),
        [InvalidResourceHandle] = ("cudaErrorInvalidResourceHandle", "invalid resource handle"),
        [IllegalState] = ("cudaErrorIllegalState", "the operation cannot be performed in the present state"),
        [NotReady] = ("cudaErrorNotReady", "device not ready"),
        [IllegalAddress] = ("cudaErrorIllegalAddress", "an illegal memory access was encountered"),
        [LaunchOutOfResources] = ("cudaErrorLaunchOutOfResources", "too many resources requested for launch"),
        [LaunchTimeout] = ("cudaErrorLaunchTimeout", "the launch timed out and was terminated"),
        [PeerAccessAlreadyEnabled] = ("cudaErrorPeerAccessAlreadyEnabled", "peer access is already enabled"),
        [ContextIsDestroyed] = ("cudaErrorContextIsDestroyed", "context is destroyed"),
        [HostMemoryAlreadyRegistered] = ("cudaErrorHostMemoryAlreadyRegistered", "part or all of the requested memory range is already mapped"),
        [HostMemoryNotRegistered] = ("cudaErrorHostMemoryNotRegistered", "pointer does not correspond to a registered memory region"),
        [LaunchFailure] = ("cudaErrorLaunchFailure", "unspecified launch failure"),
        [NotPermitted] = ("cudaErrorNotPermitted", "operation not permitted"),
        [NotSupported] = ("cudaErrorNotSupported", "operation not supported"),
        [Unknown] = ("cudaErrorUnknown", "unknown error"),
    };

    /// <summary>"cudaErrorInvalidValue"; the live library's name when loaded; "cudaError(N)" for a code nobody knows.</summary>
    public static string Name(int code)
    {
        if (CudaRuntime.TryGetErrorText(code, out string? name, out _) && name is not null) return name;
        return Known.TryGetValue(code, out var k) ? k.Name : $"cudaError({code})";
    }

    /// <summary>"cudaErrorInvalidValue (1): invalid argument".</summary>
    public static string Describe(int code)
    {
        if (CudaRuntime.TryGetErrorText(code, out string? name, out string? message) && name is not null)
            return $"{name} ({code}): {message}";
        return Known.TryGetValue(code, out var k) ? $"{k.Name} ({code}): {k.Message}" : $"cudaError({code}): unknown error code";
    }

    /// <summary>The same text from the table only, never the library (what the unit tests pin down).</summary>
    public static string DescribeFromTable(int code) =>
        Known.TryGetValue(code, out var k) ? $"{k.Name} ({code}): {k.Message}" : $"cudaError({code}): unknown error code";
}

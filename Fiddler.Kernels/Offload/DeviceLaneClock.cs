using Fiddler.Kernels.Cuda;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// Three timing events on the default stream around a gated layer's device work: before it, after it (before the
/// wait for the CPU lane) and after the wait. Read once the next layer's routing has been read back (all complete).
/// </summary>
internal sealed class DeviceLaneClock(Device device) : IDisposable
{
    private readonly int _device = device.index < 0 ? 0 : device.index;
    private CudaEvent? _begin, _ready, _released;
    private bool _recorded;

    public void Begin()
    {
        _begin ??= CudaEvent.CreateTiming(_device);
        _ready ??= CudaEvent.CreateTiming(_device);
        _released ??= CudaEvent.CreateTiming(_device);
        _recorded = false;
        _begin.RecordOnDefaultStream();
    }

    public void Ready() => _ready!.RecordOnDefaultStream();

    public void Released()
    {
        _released!.RecordOnDefaultStream();
        _recorded = true;
    }

    /// <summary>The layer's device timings, or null when not all three were recorded or they are not done yet.</summary>
    public DeviceLaneTimings? Read()
    {
        if (!_recorded || !_released!.IsComplete) return null;
        _recorded = false;
        return new(CudaEvent.ElapsedMilliseconds(_begin!, _ready!), CudaEvent.ElapsedMilliseconds(_ready!, _released));
    }

    public void Dispose()
    {
        _begin?.Dispose();
        _ready?.Dispose();
        _released?.Dispose();
    }
}

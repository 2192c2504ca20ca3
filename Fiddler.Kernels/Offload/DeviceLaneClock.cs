using Fiddler.Kernels.Cuda;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// Timing events on the default stream around a gated layer's device work: before it, after it (before the wait for
/// the CPU lane), after the wait, and when the next layer's routing is ready to be read back (the merge, the next
/// attention and router in between: the device's part of the serial hand-off between two layers' lanes). Read once
/// the next layer's routing has been read back (all complete).
/// </summary>
internal sealed class DeviceLaneClock : IDisposable
{
    public DeviceLaneClock(Device device)
    {
        _device = device.index < 0 ? 0 : device.index;
        OnReadbackQueued = Readable;
    }

    /// <summary><see cref="Readable"/> as a delegate made once (it is handed to every routing read-back).</summary>
    public Action OnReadbackQueued { get; }

    private readonly int _device;
    private CudaEvent? _begin, _ready, _released, _routed, _readable;
    private bool _recorded, _routedRecorded, _readableRecorded;

    public void Begin()
    {
        _begin ??= CudaEvent.CreateTiming(_device);
        _ready ??= CudaEvent.CreateTiming(_device);
        _released ??= CudaEvent.CreateTiming(_device);
        _routed ??= CudaEvent.CreateTiming(_device);
        _readable ??= CudaEvent.CreateTiming(_device);
        _recorded = _routedRecorded = _readableRecorded = false;
        _begin.RecordOnDefaultStream();
    }

    public void Ready() => _ready!.RecordOnDefaultStream();

    public void Released()
    {
        _released!.RecordOnDefaultStream();
        _recorded = true;
    }

    /// <summary>The next layer's routing is computed (queued before its read-back); once per recorded layer.</summary>
    public void Routed()
    {
        if (!_recorded || _routedRecorded) return;
        _routed!.RecordOnDefaultStream();
        _routedRecorded = true;
    }

    /// <summary>The next layer's routing read-back is queued (its copies to the host); once, after <see cref="Routed"/>.</summary>
    public void Readable()
    {
        if (!_routedRecorded || _readableRecorded) return;
        _readable!.RecordOnDefaultStream();
        _readableRecorded = true;
    }

    /// <summary>The layer's device timings (null when not all three were recorded or they are not done yet), the ms from
    /// the lane's release to the next layer's routing, and from there to its read-back copies done (null when not
    /// recorded or not done).</summary>
    public (DeviceLaneTimings? Lane, double? UntilRoutedMs, double? ReadbackMs) Read()
    {
        if (!_recorded || !_released!.IsComplete) return (null, null, null);
        _recorded = false;
        double? routed = _routedRecorded && _routed!.IsComplete ? CudaEvent.ElapsedMilliseconds(_released, _routed) : null;
        double? readback = routed is not null && _readableRecorded && _readable!.IsComplete ? CudaEvent.ElapsedMilliseconds(_routed!, _readable) : null;
        _routedRecorded = _readableRecorded = false;
        return (new(CudaEvent.ElapsedMilliseconds(_begin!, _ready!), CudaEvent.ElapsedMilliseconds(_ready!, _released)), routed, readback);
    }

    public void Dispose()
    {
        _begin?.Dispose();
        _ready?.Dispose();
        _released?.Dispose();
        _routed?.Dispose();
        _readable?.Dispose();
    }
}

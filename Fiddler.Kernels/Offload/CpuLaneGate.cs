using Fiddler.Kernels.Cuda;

namespace Fiddler.Kernels.Offload;

/// <summary>How the CPU lane's results reach the layer's output on the compute device.</summary>
public enum CpuMerge
{
    /// <summary>The host waits for the CPU lane, then copies its results with a blocking copy.</summary>
    Blocking,
    /// <summary>
    /// The host waits for the CPU lane, then copies its results from page-locked memory without blocking, so the host
    /// queues the next layer while the device lane (streamed experts) finishes. As Blocking off CUDA.
    /// </summary>
    NonBlocking,
    /// <summary>
    /// The host does not wait for the CPU lane: it queues a device-side wait on the lane's signal, the copy and the adds,
    /// then goes on queuing the next layer's attention and routing, which the device starts the moment the lane
    /// finishes. Off CUDA (or where the driver cannot wait on host memory) the host waits at the same point instead.
    /// </summary>
    Gated,
}

/// <summary>
/// Orders the compute device's work after a CPU lane: the lane raises its ticket when its results are in host
/// memory (also when it failed), and <see cref="Hold"/> makes the device's work queued after it wait for that.
/// </summary>
public interface ICpuLaneGate : IDisposable
{
    /// <summary>A new ticket, for the next CPU lane.</summary>
    uint Arm();

    /// <summary>The lane's results are written: release whatever waits for <paramref name="ticket"/>. Any thread.</summary>
    void Raise(uint ticket);

    /// <summary>Device work queued after this call waits for <paramref name="ticket"/>. Blocks the host only where the device cannot wait by itself.</summary>
    void Hold(uint ticket);

    /// <summary>True when <see cref="Hold"/> returns at once and the device waits.</summary>
    bool DeviceWaits { get; }
}

/// <summary>
/// The device waits on a <see cref="HostSignal"/>: the host never blocks in <see cref="Hold"/>. With
/// <paramref name="spinKernel"/> (where the signal loaded it) a one-thread kernel polls the word; otherwise the driver's
/// stream wait (cuStreamWaitValue32).
/// </summary>
public sealed class CudaLaneGate(HostSignal signal, bool spinKernel = false) : ICpuLaneGate
{
    private uint _next = signal.Value;

    public bool DeviceWaits => true;

    /// <summary>Whether the device waits in the spin kernel (false: the driver's stream wait).</summary>
    public bool SpinKernel { get; } = spinKernel && signal.HasSpinKernel;

    public uint Arm() => ++_next;

    public void Raise(uint ticket) => signal.Raise(ticket);

    public void Hold(uint ticket) => signal.QueueWait(CudaDriver.LegacyStream, ticket, SpinKernel);

    /// <summary>
    /// Lets the signal's device drain its queued waits on the signal (a raised ticket's wait may not have run yet), then
    /// frees the signal. The drain is that device's: the legacy default stream is per device, and the thread's current
    /// device may be another (cuda:N with N &gt; 0).
    /// </summary>
    public void Dispose()
    {
        try
        {
            using (CudaRuntime.UseDevice(signal.Device)) CudaRuntime.StreamSynchronize(CudaRuntime.LegacyDefaultStream);
        }
        catch (CudaException) { /* a faulted device runs nothing more: the memory can go */ }
        signal.Dispose();
    }
}

/// <summary>The host waits in <see cref="Hold"/> until the ticket is raised (CPU devices, where ops run synchronously; drivers without stream waits).</summary>
public sealed class HostLaneGate : ICpuLaneGate
{
    private readonly object _lock = new();
    private uint _next, _raised;

    public bool DeviceWaits => false;

    public uint Arm() => ++_next;

    public void Raise(uint ticket)
    {
        lock (_lock)
        {
            if (unchecked((int)(ticket - _raised)) > 0) _raised = ticket;
            Monitor.PulseAll(_lock);
        }
    }

    public void Hold(uint ticket)
    {
        lock (_lock)
            while (unchecked((int)(_raised - ticket)) < 0) Monitor.Wait(_lock);
    }

    public void Dispose() { }
}

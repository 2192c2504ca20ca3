using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// Small device→host reads on the decode path (routing ids): the copy goes into page-locked memory and the host polls
/// the event (<see cref="SpinMicroseconds"/>, long enough to cover a decode layer's CPU lane), then sleeps on it (a
/// blocking-sync event), so a long wait (a prefill layer's lane) does not hold the core forever. Polling costs the core
/// of the thread that drives the GPU, which the CPU expert pool leaves free. One buffer per thread and device (the thread that drives the
/// GPU); results are copied out before returning. The buffers live as long as the process (a few KB of page-locked
/// memory and one event per such thread).
/// </summary>
public static class HostReadback
{
    [ThreadStatic] private static Dictionary<int, (Tensor Buffer, CudaEvent Done)>? t_staging;
    private static int s_spinMicroseconds = DefaultSpinMicroseconds;

    /// <summary>
    /// The default poll before sleeping: 20 ms, longer than a decode layer's CPU lane (~5 ms at 24 GiB), which the
    /// routing read-back of the next layer waits for. On the H100 host a host asleep on a blocking-sync event wakes
    /// ~130 µs after the device (cuda-selftest), and a decode layer's hand-off (CPU lane end → routing on the host) took
    /// 0.32-0.40 ms polling for 20 ms against 0.42-0.62 ms polling for 0.2 ms (same call, 24 GiB, three pairs).
    /// </summary>
    public const int DefaultSpinMicroseconds = 20_000;

    /// <summary>
    /// How long the host polls a read-back before it sleeps on the event, in µs (0: sleep at once). A short wait (the
    /// device finishing a few kernels behind the host) is then not stretched by the wake-up; a long one (the device
    /// waiting for a CPU lane) costs the polling thread's own core for that long, not a CPU expert worker's.
    /// </summary>
    public static int SpinMicroseconds
    {
        get => Volatile.Read(ref s_spinMicroseconds);
        set => Volatile.Write(ref s_spinMicroseconds, value is >= 0 and <= 100_000 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), $"read-back spin must be 0..100000 µs, got {value}"));
    }

    /// <summary>The int64 values of <paramref name="t"/> (any shape), read after all work queued before on its device.</summary>
    /// <param name="afterCopy">Called (CUDA only) once the copy is queued, before the wait: e.g. to record a timing event.</param>
    public static long[] Longs(Tensor t, Action? afterCopy = null)
    {
        if (t.device.type != DeviceType.CUDA || !CudaRuntime.IsAvailable)
        {
            using var scope = NewDisposeScope();
            var dense = t.cpu().to(ScalarType.Int64).contiguous();
            return Copy(dense, dense.NumberOfElements);
        }
        long n = t.NumberOfElements;
        int device = t.device.index < 0 ? 0 : t.device.index;
        t_staging ??= new();
        if (!t_staging.TryGetValue(device, out var s) || s.Buffer.NumberOfElements < n)
        {
            if (s.Buffer is not null) { s.Done.Synchronize(); s.Buffer.Dispose(); s.Done.Dispose(); }
            using var pageable = empty(Math.Max(n, 256), ScalarType.Int64);
            var buffer = pageable.pin_memory();
            buffer.DetachFromDisposeScope();
            s = (buffer, CudaEvent.CreateBlocking(device));
            t_staging[device] = s;
        }
        using (var view = s.Buffer.narrow(0, 0, n))
        using (var flat = t.reshape(-1))
            view.copy_(flat, true);
        afterCopy?.Invoke();
        s.Done.RecordOnDefaultStream();
        Wait(s.Done);
        return Copy(s.Buffer, n);
    }

    // The first n int64s of a contiguous host tensor; data<long>() would leave an array object for the finalizer (it
    // reads the tensor's strides through TorchSharp's never-unregistered pinned arrays; see TensorDims).
    private static unsafe long[] Copy(Tensor host, long n) => new ReadOnlySpan<long>((void*)TensorMemory.DataPtr(host), checked((int)n)).ToArray();

    /// <summary>Waits for a blocking-sync event: polls for <see cref="SpinMicroseconds"/>, then sleeps on it.</summary>
    internal static void Wait(CudaEvent done)
    {
        int spin = SpinMicroseconds;
        if (spin > 0)
        {
            long deadline = Stopwatch.GetTimestamp() + spin * Stopwatch.Frequency / 1_000_000;
            do
            {
                if (done.IsComplete) return;
                Thread.SpinWait(16);
            } while (Stopwatch.GetTimestamp() < deadline);
        }
        done.Synchronize();
    }
}

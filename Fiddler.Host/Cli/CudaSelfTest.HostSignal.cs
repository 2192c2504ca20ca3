using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

internal sealed partial class CudaSelfTest
{
    /// <summary>
    /// The gated merge's mechanism: the default stream waits on a host-written counter (cuStreamWaitValue32), so a
    /// copy queued before the host wrote its source must still read what the host wrote before raising the counter.
    /// </summary>
    private void CheckHostSignal(int deviceIndex)
    {
        Console.WriteLine("host signal (device waits for the host; the gated CPU merge):");
        using var signal = HostSignal.TryCreate(deviceIndex, out string reason);
        Check("cuStreamWaitValue32 on mapped host memory is available", signal is not null, signal is null ? reason : "");
        if (signal is null) return;
        const int n = 1 << 20;
        using var src = zeros(n).pin_memory();
        using var dst = empty(n, device: dev);
        using var done = CudaEvent.Create(deviceIndex);
        uint ticket = signal.Value + 1;
        signal.QueueWait(CudaDriver.LegacyStream, ticket);
        dst.copy_(src, true);
        done.RecordOnDefaultStream();
        Thread.Sleep(50);
        bool held = !CudaRuntime.EventQuery(done.Handle);
        src.fill_(3.0f); // written after the copy was queued, before the signal
        signal.Raise(ticket);
        CudaRuntime.EventSynchronize(done.Handle);
        float sum = dst.sum().item<float>();
        Check("the default stream waits until the host raises the signal", held);
        Check("a copy queued before the host wrote its source reads what was written before the raise", sum == 3.0f * n, $"sum {sum}");

        // Raise → the device's next op done, as the host sees it (one small op after the wait).
        var latencies = new List<double>();
        using var one = ones(16, device: dev);
        for (int i = 0; i < 50; i++)
        {
            ticket = signal.Value + 1;
            signal.QueueWait(CudaDriver.LegacyStream, ticket);
            one.add_(1); // in place: returns one itself
            done.RecordOnDefaultStream();
            Thread.Sleep(1);
            long t0 = Stopwatch.GetTimestamp();
            signal.Raise(ticket);
            while (!CudaRuntime.EventQuery(done.Handle)) Thread.SpinWait(20);
            latencies.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
        }
        latencies.Sort();
        Console.WriteLine($"  raise → next device op done: median {latencies[latencies.Count / 2]:F1} µs, max {latencies[^1]:F1} µs (50 runs)");
    }
}

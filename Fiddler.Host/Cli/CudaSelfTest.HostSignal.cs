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
        using var signal = HostSignal.TryCreate(deviceIndex, out string reason, spinKernel: true);
        Check("cuStreamWaitValue32 on mapped host memory is available", signal is not null, signal is null ? reason : "");
        if (signal is null) return;
        const int n = 1 << 20;
        using var src = zeros(n).pin_memory();
        using var dst = empty(n, device: dev);
        using var done = CudaEvent.Create(deviceIndex);
        CheckOrdering(signal, src, dst, done, spinKernel: false, value: 3.0f);

        // Raise → the device's next op done, as the host sees it (one small op after the wait), after 1 and 5 ms waits.
        using var one = ones(16, device: dev);
        foreach (int sleepMs in new[] { 1, 5 })
            Console.WriteLine($"  raise → next device op done (stream wait, {sleepMs} ms wait): {Summary(RaiseLatencies(signal, one, done, false, sleepMs))}");
        Check("the spin-wait kernel loads", signal.HasSpinKernel, signal.SpinKernelUnavailableReason ?? "");
        if (signal.HasSpinKernel)
        {
            CheckOrdering(signal, src, dst, done, spinKernel: true, value: 5.0f);
            foreach (int sleepMs in new[] { 1, 5 })
                Console.WriteLine($"  raise → next device op done (spin kernel, {sleepMs} ms wait): {Summary(RaiseLatencies(signal, one, done, true, sleepMs))}");
        }

        // The parts of a decode layer's hand-off, one at a time: an event on an idle device seen by a polling host; an
        // 8-byte device→host copy (the routing read-back); a host asleep on a blocking-sync event woken by the device.
        using var idle = CudaEvent.Create(deviceIndex);
        using var staged = zeros(8, ScalarType.Int64).pin_memory();
        using var ids = zeros(8, ScalarType.Int64, device: dev);
        using var blocking = CudaEvent.CreateBlocking(deviceIndex);
        var poll = new List<double>();
        var copy = new List<double>();
        var wake = new List<double>();
        for (int i = 0; i < 50; i++)
        {
            using (CudaRuntime.UseDevice(deviceIndex)) CudaRuntime.StreamSynchronize(CudaRuntime.LegacyDefaultStream); // this device's
            long t0 = Stopwatch.GetTimestamp();
            idle.RecordOnDefaultStream();
            while (!CudaRuntime.EventQuery(idle.Handle)) Thread.SpinWait(20);
            poll.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);

            t0 = Stopwatch.GetTimestamp();
            staged.copy_(ids, true);
            idle.RecordOnDefaultStream();
            while (!CudaRuntime.EventQuery(idle.Handle)) Thread.SpinWait(20);
            copy.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);

            uint ticket = signal.Value + 1;
            signal.QueueWait(CudaDriver.LegacyStream, ticket);
            blocking.RecordOnDefaultStream();
            long raised = 0;
            var raiser = new Thread(() => { Thread.Sleep(2); raised = Stopwatch.GetTimestamp(); signal.Raise(ticket); });
            raiser.Start();
            blocking.Synchronize();
            long woke = Stopwatch.GetTimestamp();
            raiser.Join();
            wake.Add(Stopwatch.GetElapsedTime(raised, woke).TotalMicroseconds);
        }
        Console.WriteLine($"  event on an idle device, host polling: {Summary(poll)}");
        Console.WriteLine($"  8-byte device→host copy + event, host polling: {Summary(copy)}");
        Console.WriteLine($"  raise → a host asleep on a blocking-sync event wakes: {Summary(wake)}");
    }

    /// <summary>A copy queued behind the wait, before the host writes its source, must read what the host wrote before
    /// raising; and the stream must be held until then.</summary>
    private void CheckOrdering(HostSignal signal, Tensor src, Tensor dst, CudaEvent done, bool spinKernel, float value)
    {
        string how = spinKernel ? " (spin kernel)" : "";
        src.fill_(0.0f);
        uint ticket = signal.Value + 1;
        signal.QueueWait(CudaDriver.LegacyStream, ticket, spinKernel);
        dst.copy_(src, true);
        done.RecordOnDefaultStream();
        Thread.Sleep(50);
        bool held = !CudaRuntime.EventQuery(done.Handle);
        src.fill_(value); // written after the copy was queued, before the signal
        signal.Raise(ticket);
        CudaRuntime.EventSynchronize(done.Handle);
        float sum = dst.sum().item<float>();
        Check($"the default stream waits until the host raises the signal{how}", held);
        Check($"a copy queued before the host wrote its source reads what was written before the raise{how}",
            sum == value * src.NumberOfElements, $"sum {sum}");
    }

    /// <summary>µs from the host's raise to a small op queued after the wait being done, 50 times.</summary>
    private static List<double> RaiseLatencies(HostSignal signal, Tensor one, CudaEvent done, bool spinKernel, int sleepMs)
    {
        var us = new List<double>();
        for (int i = 0; i < 50; i++)
        {
            uint ticket = signal.Value + 1;
            signal.QueueWait(CudaDriver.LegacyStream, ticket, spinKernel);
            one.add_(1); // in place: returns one itself
            done.RecordOnDefaultStream();
            Thread.Sleep(sleepMs);
            long t0 = Stopwatch.GetTimestamp();
            signal.Raise(ticket);
            while (!CudaRuntime.EventQuery(done.Handle)) Thread.SpinWait(20);
            us.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
        }
        return us;
    }

    private static string Summary(List<double> us)
    {
        us.Sort();
        return $"median {us[us.Count / 2]:F1} µs, p90 {us[us.Count * 9 / 10]:F1} µs, max {us[^1]:F1} µs ({us.Count} runs)";
    }
}

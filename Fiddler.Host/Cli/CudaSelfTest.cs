using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>The checks and measurements of <c>fiddler cuda-selftest</c> (see <see cref="CudaSelfTestCommand"/>):
/// <see cref="Run"/> prints each result and returns the exit code.</summary>
internal sealed partial class CudaSelfTest(Device dev, ExpertShape shape, int iterations)
{
    private readonly List<(string Name, bool Ok, string Detail)> _checks = [];

    private void Check(string name, bool ok, string detail = "")
    {
        _checks.Add((name, ok, detail));
        Console.WriteLine($"  [{(ok ? "ok" : "FAIL")}] {name}{(detail.Length > 0 ? ": " + detail : "")}");
    }

    public int Run()
    {
        using var noGrad = no_grad();
        var lib = CudaRuntime.Library;
        Console.WriteLine($"libcudart: {lib.Path} (loaded as '{lib.Candidate}'; " +
            $"{(lib.WasAlreadyMapped ? "already in the process: libtorch's own copy" : "newly loaded: NOT the copy libtorch mapped")})");
        var cudarts = ProcessMaps.MappedFiles().Where(f => CudaLibraryResolver.IsCudartFileName(Path.GetFileName(f))).ToList();
        Console.WriteLine($"libcudart files mapped in this process: {string.Join(", ", cudarts)}");
        int rt = CudaRuntime.RuntimeVersion(), drv = CudaRuntime.DriverVersion();
        Console.WriteLine($"CUDA runtime {rt / 1000}.{rt % 1000 / 10}, driver API {drv / 1000}.{drv % 1000 / 10}; device {dev}; " +
            $"expert {shape.Intermediate}x{shape.Hidden} x3 {shape.DType} = {shape.TotalBytes / 1e6:F1} MB");
        int count = CudaRuntime.GetDeviceCount();
        Console.WriteLine($"cudaGetDeviceCount: {count}; torch.cuda.device_count: {cuda.device_count()}");
        // The name keys the latency-model cache (CudaRuntime.DeviceLabel): it should read as nvidia-smi prints it.
        Console.WriteLine($"device name (cudaGetDeviceProperties[_v2]): {CudaRuntime.DeviceName(dev.index >= 0 ? dev.index : CudaRuntime.GetDevice()) ?? "(not exported by this libcudart)"}");

        Console.WriteLine("runtime:");
        Check("device count agrees with torch", count == cuda.device_count(), $"{count} vs {cuda.device_count()}");
        var mismatched = CudaErrors.Known.Where(kv => !CudaRuntime.TryGetErrorText(kv.Key, out var n, out _) || n != kv.Value.Name)
            .Select(kv => $"{kv.Key}: table {kv.Value.Name}, library {(CudaRuntime.TryGetErrorText(kv.Key, out var n, out _) ? n : "?")}").ToList();
        Check("error-name table matches cudaGetErrorName", mismatched.Count == 0, mismatched.Count == 0 ? $"{CudaErrors.Known.Count} codes" : string.Join("; ", mismatched));
        try
        {
            CudaRuntime.SetDevice(9999);
            Check("cudaSetDevice(9999) throws CudaException", false, "no exception");
        }
        catch (CudaException e)
        {
            Check("cudaSetDevice(9999) throws CudaException", e.Code == CudaErrors.InvalidDevice, e.Message);
        }
        using (var probe = ones(1024, device: dev))
        {
            float s = probe.sum().item<float>(); // torch's own launch checks must not see our earlier error
            Check("torch still works after a failed cudart call", s == 1024f, $"sum {s}");
        }

        int deviceIndex = dev.index >= 0 ? dev.index : CudaRuntime.GetDevice();
        var hostA = PinnedExpert(seed: 1);
        var hostB = PinnedExpert(seed: 2);
        var a = HostExpert.FromTensors(hostA[0], hostA[1], hostA[2]);
        var b = HostExpert.FromTensors(hostB[0], hostB[1], hostB[2]);
        var refA = hostA.Select(t => t.to(dev)).ToArray(); // torch's own copy is the reference
        var refB = hostB.Select(t => t.to(dev)).ToArray();
        cuda.synchronize(dev);
        using var stager = new WeightStager(dev, shape, slotCount: 2);
        using var matA = randn(8192, 8192, dtype: ScalarType.BFloat16, device: dev);
        using var matB = randn(8192, 8192, dtype: ScalarType.BFloat16, device: dev);
        void Gemms(int n)
        {
            for (int i = 0; i < n; i++) matA.matmul(matB).Dispose();
        }
        Gemms(3);
        cuda.synchronize(dev);
        var clock = Stopwatch.StartNew();
        Gemms(10);
        cuda.synchronize(dev);
        double gemmMs = clock.Elapsed.TotalMilliseconds / 10;
        double expertCopyMs = shape.TotalBytes / 54e9 * 1e3; // about, for sizing the busy loops
        int busyGemms = Math.Max(1, (int)Math.Ceiling(3 * expertCopyMs / gemmMs));

        Console.WriteLine("ordering (all checks read the slot on the default stream, after the stager's events):");
        {
            ZeroSlot(stager, 0);
            var s = stager.Begin(0, a);
            stager.MakeDefaultStreamWait(s);
            using var d = Mismatches(s, refA);
            stager.Release(0);
            long n = d.item<long>();
            Check("copy → default stream: slot equals the source right after MakeDefaultStreamWait", n == 0, $"{n} elements differ");
        }
        {
            ZeroSlot(stager, 1);
            var s = stager.Begin(1, a); // negative control: no MakeDefaultStreamWait
            using var d = Mismatches(s, refA);
            long n = d.item<long>();
            stager.Synchronize();
            stager.Release(1);
            Console.WriteLine($"  (negative control, same without MakeDefaultStreamWait: {n} elements differed — " +
                $"{(n > 0 ? "the race is real and the event is what prevents it" : "race not observed, control inconclusive")})");
        }
        {
            var s = stager.Begin(1, a);
            stager.MakeDefaultStreamWait(s);
            Gemms(busyGemms); // keep the default stream busy so that the read of A comes late
            using var dA = Mismatches(s, refA);
            stager.Release(1);
            clock.Restart();
            var s2 = stager.Begin(1, b); // must wait on the device for the read of A, not on the host
            double beginMs = clock.Elapsed.TotalMilliseconds;
            stager.MakeDefaultStreamWait(s2);
            using var dB = Mismatches(s2, refB);
            stager.Release(1);
            long nA = dA.item<long>(), nB = dB.item<long>();
            Check("default stream → copy: restaging a slot waits for the kernels that read it (Release)", nA == 0 && nB == 0,
                $"{nA} / {nB} elements differ in A (read behind {busyGemms} matmuls) / B; Begin returned in {beginMs:F3} ms");
        }
        {
            var s = stager.Begin(1, a); // negative control: overwrite without waiting for the slot's free event
            stager.MakeDefaultStreamWait(s);
            Gemms(busyGemms);
            using var dA = Mismatches(s, refA);
            var (w1, w3, w2) = stager.SlotTensors(1);
            using (CudaRuntime.UseDevice(deviceIndex))
            {
                CudaRuntime.MemcpyAsync(TensorMemory.DataPtr(w1), b.W1, b.W1Bytes, CudaMemcpyKind.HostToDevice, stager.CopyStream.Handle);
                CudaRuntime.MemcpyAsync(TensorMemory.DataPtr(w3), b.W3, b.W3Bytes, CudaMemcpyKind.HostToDevice, stager.CopyStream.Handle);
                CudaRuntime.MemcpyAsync(TensorMemory.DataPtr(w2), b.W2, b.W2Bytes, CudaMemcpyKind.HostToDevice, stager.CopyStream.Handle);
            }
            long n = dA.item<long>();
            stager.Synchronize();
            stager.Release(1);
            Console.WriteLine($"  (negative control, raw copy of B without waiting for Release: {n} elements of A differed — " +
                $"{(n > 0 ? "the race is real and the free event is what prevents it" : "race not observed, control inconclusive")})");
        }

        Console.WriteLine("misuse:");
        {
            var s = stager.Begin(0, a);
            Check("Begin on a slot in use throws", Throws<InvalidOperationException>(() => stager.Begin(0, a)));
            stager.Release(0);
            Check("MakeDefaultStreamWait on a released expert throws", Throws<InvalidOperationException>(() => stager.MakeDefaultStreamWait(s)));
            Check("Begin with wrong sizes throws", Throws<ArgumentException>(() => stager.Begin(0, a with { W2Bytes = a.W2Bytes - 2 })));
            Check("Release of a free slot throws", Throws<InvalidOperationException>(() => stager.Release(0)));
            stager.Synchronize();
        }

        CheckHostSignal(deviceIndex);

        Console.WriteLine($"bandwidth (host → device, {iterations} experts, cudaEvent timing on the copy stream):");
        using var start = CudaEvent.CreateTiming(deviceIndex);
        using var stop = CudaEvent.CreateTiming(deviceIndex);
        (double Ms, double HostMs) TimeCopies(HostExpert src, int n)
        {
            stager.Synchronize();
            cuda.synchronize(dev);
            start.Record(stager.CopyStream);
            var host = Stopwatch.StartNew();
            for (int i = 0; i < n; i++)
            {
                stager.Begin(i % stager.SlotCount, src);
                stager.Release(i % stager.SlotCount); // nothing reads the slot here
            }
            double hostMs = host.Elapsed.TotalMilliseconds;
            stop.Record(stager.CopyStream);
            stop.Synchronize();
            return (CudaEvent.ElapsedMilliseconds(start, stop), hostMs);
        }
        double Gbps(double ms, int n) => n * shape.TotalBytes / (ms * 1e6);
        TimeCopies(a, 2); // warm-up
        var (copyMs, queueMs) = Enumerable.Range(0, 3).Select(_ => TimeCopies(a, iterations)).MinBy(t => t.Ms);
        Console.WriteLine($"  torch pinned tensors: {Gbps(copyMs, iterations):F1} GB/s ({copyMs / iterations:F2} ms per expert; " +
            $"host spent {queueMs:F3} ms queuing {iterations})");
        {
            var torchClock = Stopwatch.StartNew();
            var (w1, w3, w2) = stager.SlotTensors(0);
            for (int i = 0; i < iterations; i++)
            {
                w1.copy_(hostA[0], true);
                w3.copy_(hostA[1], true);
                w2.copy_(hostA[2], true);
            }
            cuda.synchronize(dev);
            double ms = torchClock.Elapsed.TotalMilliseconds;
            Console.WriteLine($"  (for comparison, torch copy_(non_blocking) on the default stream: {Gbps(ms, iterations):F1} GB/s, wall clock)");
        }
        CheckSource("cudaHostAlloc buffer (PinnedBuffer)", stager, refA, hostA, TimeCopies, Gbps, kind: 0);
        CheckSource("cudaHostRegister'ed native memory", stager, refA, hostA, TimeCopies, Gbps, kind: 1);
        CheckSource("cudaHostRegister'ed read-only file mapping", stager, refA, hostA, TimeCopies, Gbps, kind: 2);
        CheckSource("pageable native memory (not registered)", stager, refA, hostA, TimeCopies, Gbps, kind: 3);

        Console.WriteLine("overlap with GPU compute (wall clock, best of 3):");
        int gemmCount = Math.Max(1, (int)Math.Round(copyMs / gemmMs));
        double GemmAlone()
        {
            cuda.synchronize(dev);
            var c = Stopwatch.StartNew();
            Gemms(gemmCount);
            cuda.synchronize(dev);
            return c.Elapsed.TotalMilliseconds;
        }
        double CopyAlone()
        {
            cuda.synchronize(dev);
            var c = Stopwatch.StartNew();
            for (int i = 0; i < iterations; i++)
            {
                stager.Begin(i % stager.SlotCount, a);
                stager.Release(i % stager.SlotCount);
            }
            stager.Synchronize();
            return c.Elapsed.TotalMilliseconds;
        }
        double Both()
        {
            cuda.synchronize(dev);
            var c = Stopwatch.StartNew();
            for (int i = 0; i < iterations; i++)
            {
                stager.Begin(i % stager.SlotCount, a);
                stager.Release(i % stager.SlotCount); // recorded before the matmuls are queued: no false dependency
            }
            Gemms(gemmCount);
            cuda.synchronize(dev);
            stager.Synchronize();
            return c.Elapsed.TotalMilliseconds;
        }
        double g = Best(GemmAlone), t = Best(CopyAlone), both = Best(Both);
        Console.WriteLine($"  matmul 8192² bf16 x{gemmCount}: {g:F1} ms; copy x{iterations}: {t:F1} ms; both: {both:F1} ms " +
            $"(sum {g + t:F1}, max {Math.Max(g, t):F1}) → {Verdict(g, t, both)}");

        Console.WriteLine("overlap with CPU compute on the host thread (wall clock, best of 3):");
        using var cpuA = randn(1024, 1024);
        using var cpuB = randn(1024, 1024);
        for (int i = 0; i < 5; i++) cpuA.matmul(cpuB).Dispose(); // warm-up (thread pool, caches)
        var cpuClock = Stopwatch.StartNew();
        for (int i = 0; i < 20; i++) cpuA.matmul(cpuB).Dispose();
        int cpuCount = Math.Max(1, (int)Math.Round(copyMs / (cpuClock.Elapsed.TotalMilliseconds / 20)));
        double CpuAlone()
        {
            var c = Stopwatch.StartNew();
            for (int i = 0; i < cpuCount; i++) cpuA.matmul(cpuB).Dispose();
            return c.Elapsed.TotalMilliseconds;
        }
        double CpuAndCopy()
        {
            cuda.synchronize(dev);
            var c = Stopwatch.StartNew();
            for (int i = 0; i < iterations; i++)
            {
                stager.Begin(i % stager.SlotCount, a);
                stager.Release(i % stager.SlotCount);
            }
            for (int i = 0; i < cpuCount; i++) cpuA.matmul(cpuB).Dispose();
            stager.Synchronize();
            return c.Elapsed.TotalMilliseconds;
        }
        double cpu = Best(CpuAlone), t2 = Best(CopyAlone), cpuBoth = Best(CpuAndCopy);
        Console.WriteLine($"  CPU matmul 1024² fp32 x{cpuCount}: {cpu:F1} ms; copy x{iterations}: {t2:F1} ms; both: {cpuBoth:F1} ms " +
            $"(sum {cpu + t2:F1}, max {Math.Max(cpu, t2):F1}) → {Verdict(cpu, t2, cpuBoth)}");
        Console.WriteLine($"stager counters: {stager.TransferCount} experts, {stager.BytesTransferred / 1e9:F2} GB");

        foreach (var x in hostA.Concat(hostB).Concat(refA).Concat(refB)) x.Dispose();
        var failed = _checks.Where(c => !c.Ok).Select(c => c.Name).ToList();
        Console.WriteLine(failed.Count == 0 ? $"cuda-selftest: PASS ({_checks.Count} checks)" : $"cuda-selftest: FAIL ({string.Join("; ", failed)})");
        return failed.Count == 0 ? 0 : 1;
    }
}

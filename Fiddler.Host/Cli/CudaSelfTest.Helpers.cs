using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

// Helpers of CudaSelfTest.Run: host-memory source checks, test data, comparisons and timing summaries.
internal sealed unsafe partial class CudaSelfTest
{
    private static double Best(Func<double> f) => Enumerable.Range(0, 3).Select(_ => f()).Min();

    private static string Verdict(double x, double y, double both)
    {
        double saved = x + y - both, possible = Math.Min(x, y);
        return $"overlap {100 * saved / possible:F0}% of the shorter one hidden";
    }

    private static bool Throws<T>(Action a) where T : Exception
    {
        try { a(); return false; }
        catch (T) { return true; }
    }

    private Tensor[] PinnedExpert(ulong seed)
    {
        var shapes = new[] { shape.W1Shape, shape.W3Shape, shape.W2Shape };
        var result = new Tensor[3];
        for (int i = 0; i < 3; i++)
        {
            using var pageable = empty(shapes[i], shape.DType);
            result[i] = pageable.pin_memory();
            Fill(TensorMemory.DataPtr(result[i]), result[i].numel(), seed * 3 + (ulong)i);
        }
        return result;
    }

    /// <summary>Pseudo-random bf16 bit patterns with the top exponent bit clear: finite, no NaN, so != compares bits.</summary>
    private static void Fill(IntPtr p, long elements, ulong seed)
    {
        const long chunk = 1 << 20;
        long chunks = (elements + chunk - 1) / chunk;
        Parallel.For(0, chunks, c =>
        {
            ushort* q = (ushort*)p;
            long end = Math.Min(elements, (c + 1) * chunk);
            for (long i = c * chunk; i < end; i++)
            {
                ulong z = (ulong)i + seed * 0x9E3779B97F4A7C15UL;
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
                q[i] = (ushort)((z >> 48) & 0xBFFF);
            }
        });
    }

    private void ZeroSlot(WeightStager stager, int slot)
    {
        var (w1, w3, w2) = stager.SlotTensors(slot);
        w1.zero_();
        w3.zero_();
        w2.zero_();
        cuda.synchronize(dev);
    }

    /// <summary>Elements that differ, summed on the GPU (a queued default-stream op; read with item()).</summary>
    private static Tensor Mismatches(in StagedExpert s, Tensor[] reference)
    {
        using var e1 = s.W1.ne(reference[0]);
        using var e3 = s.W3.ne(reference[1]);
        using var e2 = s.W2.ne(reference[2]);
        using var n1 = e1.sum();
        using var n3 = e3.sum();
        using var n2 = e2.sum();
        using var n13 = n1 + n3;
        return n13 + n2;
    }

    /// <summary>kind 0: PinnedBuffer; 1: registered native; 2: registered read-only mmap'd file; 3: pageable native.</summary>
    private void CheckSource(string name, WeightStager stager, Tensor[] reference, Tensor[] source,
        Func<HostExpert, int, (double Ms, double HostMs)> time, Func<double, int, double> gbps, int kind)
    {
        long total = shape.TotalBytes;
        void CopyPacked(IntPtr dst)
        {
            long offset = 0;
            foreach (var t in source)
            {
                long n = t.numel() * t.element_size();
                Buffer.MemoryCopy((void*)TensorMemory.DataPtr(t), (void*)(dst + (nint)offset), n, n);
                offset += n;
            }
        }
        PinnedBuffer? buffer = null;
        void* native = null;
        string? file = null;
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        PinnedRegistration? registration = null;
        byte* mapped = null;
        try
        {
            IntPtr start;
            var host = Stopwatch.StartNew();
            switch (kind)
            {
                case 0:
                    buffer = new PinnedBuffer(total);
                    start = buffer.Pointer;
                    CopyPacked(start);
                    break;
                case 1 or 3:
                    native = NativeMemory.AlignedAlloc((nuint)total, 4096);
                    start = (IntPtr)native;
                    CopyPacked(start);
                    host.Restart();
                    if (kind == 1) registration = PinnedMemory.Pin(start, total);
                    break;
                default:
                    file = Path.Combine(Path.GetTempPath(), $"fiddler-selftest-{Environment.ProcessId}.bin");
                    native = NativeMemory.AlignedAlloc((nuint)total, 4096);
                    CopyPacked((IntPtr)native);
                    using (var fs = new FileStream(file, FileMode.Create, FileAccess.Write))
                        fs.Write(new ReadOnlySpan<byte>(native, (int)Math.Min(total, int.MaxValue)));
                    if (total > int.MaxValue) throw new ArgumentException("--mb too large for the file check");
                    map = MemoryMappedFile.CreateFromFile(file, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
                    view = map.CreateViewAccessor(0, total, MemoryMappedFileAccess.Read);
                    view.SafeMemoryMappedViewHandle.AcquirePointer(ref mapped);
                    start = (IntPtr)(mapped + view.PointerOffset);
                    host.Restart();
                    registration = PinnedMemory.Pin(start, total, CudaHostRegisterFlags.ReadOnly);
                    break;
            }
            double registerMs = host.Elapsed.TotalMilliseconds;
            var expert = HostExpert.Packed(start, shape);
            ZeroSlot(stager, 0);
            var s = stager.Begin(0, expert);
            stager.MakeDefaultStreamWait(s);
            using var d = Mismatches(s, reference);
            stager.Release(0);
            long diff = d.item<long>();
            int n = kind == 3 ? Math.Min(3, iterations) : iterations;
            var (ms, hostMs) = time(expert, n);
            Check($"{name}: slot equals source", diff == 0,
                $"{diff} elements differ; {gbps(ms, n):F1} GB/s; host spent {hostMs:F2} ms queuing {n}" +
                (kind is 1 or 2 ? $"; registering took {registerMs:F0} ms" : ""));
        }
        catch (CudaException e)
        {
            Check($"{name}: slot equals source", false, e.Message);
        }
        finally
        {
            stager.Synchronize();
            registration?.Dispose();
            buffer?.Dispose();
            if (mapped != null) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map?.Dispose();
            if (native != null) NativeMemory.AlignedFree(native);
            if (file is not null) File.Delete(file);
        }
    }
}

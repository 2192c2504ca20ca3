using System.Runtime.InteropServices;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Offload;
using Xunit;

namespace Fiddler.Tests.Kernels.Offload;

// LaneCeiling.Measure needs a CUDA stager: it runs in `fiddler bench` on the GPU machine. Here: its CPU pass and its arithmetic.
public class LaneCeilingTests
{
    [Fact]
    public unsafe void ReadOnce_ReadsEveryWholeMebibyteOfEachRegion()
    {
        const long MiB = 1 << 20;
        using var pool = new CpuWorkerPool(threads: 2);
        byte* a = (byte*)NativeMemory.AllocZeroed((nuint)(3 * MiB + MiB / 2));
        byte* b = (byte*)NativeMemory.AllocZeroed((nuint)MiB);
        try
        {
            long read = CpuBandwidth.ReadOnce(pool, [((IntPtr)a, 3 * MiB + MiB / 2), ((IntPtr)b, MiB), ((IntPtr)b, MiB - 1)]);
            Assert.Equal(4 * MiB, read); // a's half-MiB tail and the region under 1 MiB are skipped
            Assert.Equal(0, CpuBandwidth.ReadOnce(pool, []));
        }
        finally
        {
            NativeMemory.Free(a);
            NativeMemory.Free(b);
        }
    }

    [Fact]
    public void Result_CeilingIsTheOffloadedBytesOverTheConcurrentRate()
    {
        var r = new LaneCeiling.Result(CpuReadGBps: 99, CopyGBps: 54.6, CpuReadWithCopyGBps: 84.5, CopyWithCpuReadGBps: 46.5, WindowMs: 150);
        Assert.Equal(131, r.ConcurrentGBps, 9);
        // Mixtral-8x7B at 24 GiB: 64 experts a token, 24 % resident, 352 MB each → 17.1 GB a token → 7.65 tok/s.
        double bytes = 0.76 * 64 * 352_321_536;
        Assert.Equal(131e9 / bytes, r.DecodeTokS(bytes), 9);
        Assert.InRange(r.DecodeTokS(bytes), 7.6, 7.7);
        Assert.Throws<ArgumentOutOfRangeException>(() => r.DecodeTokS(0));
    }
}

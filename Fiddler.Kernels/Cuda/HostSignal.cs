namespace Fiddler.Kernels.Cuda;

/// <summary>
/// A 32-bit counter in mapped, page-locked host memory that the device can wait on: <see cref="QueueWait"/> makes a
/// stream's later work wait (on the device) until the host has <see cref="Raise"/>d the counter to a value. This lets
/// the host queue work that needs a CPU result before the result exists, and go on. Values only grow (compared
/// wrap-around safe), so the word is never reset. No finalizer (CUDA may be torn down first): dispose it.
/// <para>
/// Two ways to wait: the driver's stream wait (cuStreamWaitValue32), or a one-thread kernel that polls the word over
/// PCIe (<see cref="SpinKernelPtx"/>, loaded where the driver can). On the H100 host (cuda-selftest) the device ran
/// its next op 10-15 µs after the raise with the stream wait and 7-8.5 µs with the kernel, after 1-5 ms waits; in
/// decode the two did not differ measurably, so the stream wait stays the default.
/// </para>
/// </summary>
public sealed unsafe class HostSignal : IDisposable
{
    /// <summary>The spin-wait kernel: returns once (int)(*word − value) ≥ 0, polling every ~0.2 µs.</summary>
    public const string SpinKernelPtx = """
        .version 7.0
        .target sm_70
        .address_size 64
        .visible .entry fiddler_wait_geq(.param .u64 word, .param .u32 value)
        {
            .reg .pred %p;
            .reg .b32 %r<4>;
            .reg .b64 %rd<3>;
            ld.param.u64 %rd1, [word];
            cvta.to.global.u64 %rd2, %rd1;
            ld.param.u32 %r1, [value];
        WAIT:
            ld.volatile.global.u32 %r2, [%rd2];
            sub.s32 %r3, %r2, %r1;
            setp.ge.s32 %p, %r3, 0;
            @%p bra DONE;
            nanosleep.u32 200;
            bra WAIT;
        DONE:
            ret;
        }
        """;

    private IntPtr _host;
    private readonly ulong _device;
    private IntPtr _spinKernel;

    private HostSignal(IntPtr host, ulong device, int deviceIndex)
    {
        _host = host;
        _device = device;
        Device = deviceIndex;
    }

    public int Device { get; }

    /// <summary>Whether <see cref="QueueWait"/> can use the spin-wait kernel (loaded by <see cref="TryCreate"/> when asked).</summary>
    public bool HasSpinKernel => _spinKernel != IntPtr.Zero;

    /// <summary>Why the spin-wait kernel is not there, or null.</summary>
    public string? SpinKernelUnavailableReason { get; private set; }

    /// <summary>A signal on <paramref name="device"/>, or null with <paramref name="reason"/> when the driver cannot wait on host
    /// memory. With <paramref name="spinKernel"/> it also loads the spin-wait kernel (<see cref="HasSpinKernel"/>).</summary>
    public static HostSignal? TryCreate(int device, out string reason, bool spinKernel = false)
    {
        reason = "";
        if (!CudaRuntime.IsAvailable) { reason = CudaRuntime.UnavailableReason ?? "no CUDA runtime"; return null; }
        if (!CudaDriver.IsAvailable) { reason = CudaDriver.UnavailableReason ?? "no CUDA driver API"; return null; }
        using var scope = CudaRuntime.UseDevice(device);
        IntPtr host = CudaRuntime.HostAlloc(sizeof(uint), CudaHostAllocFlags.Mapped | CudaHostAllocFlags.Portable);
        try
        {
            *(uint*)host = 0;
            var signal = new HostSignal(host, (ulong)CudaRuntime.HostGetDevicePointer(host), device);
            // Probe once: a wait that is already satisfied must queue and pass (some drivers refuse stream memory ops).
            signal.QueueWait(CudaDriver.LegacyStream, 0);
            CudaRuntime.StreamSynchronize(CudaRuntime.LegacyDefaultStream);
            if (!spinKernel) return signal;
            try
            {
                signal._spinKernel = CudaDriver.LoadFunction(SpinKernelPtx, "fiddler_wait_geq");
                signal.QueueWait(CudaDriver.LegacyStream, 0, spinKernel: true); // satisfied at once: must pass
                CudaRuntime.StreamSynchronize(CudaRuntime.LegacyDefaultStream);
            }
            catch (Exception e) when (e is CudaException or CudaDriverException or CudaUnavailableException)
            {
                signal._spinKernel = IntPtr.Zero;
                signal.SpinKernelUnavailableReason = e.Message;
            }
            return signal;
        }
        catch (Exception e) when (e is CudaException or CudaDriverException)
        {
            CudaRuntime.FreeHost(host);
            reason = e.Message;
            return null;
        }
    }

    /// <summary>The counter's value now (host read).</summary>
    public uint Value => Volatile.Read(ref *(uint*)Host);

    /// <summary>Work queued on <paramref name="stream"/> (a driver handle: <see cref="CudaDriver.LegacyStream"/> is torch's) after
    /// this call waits until the counter reaches <paramref name="value"/>: by the spin-wait kernel when asked and loaded,
    /// else by the driver's stream wait.</summary>
    public void QueueWait(IntPtr stream, uint value, bool spinKernel = false)
    {
        using var scope = CudaRuntime.UseDevice(Device);
        if (spinKernel && _spinKernel != IntPtr.Zero)
        {
            ulong word = _device;
            uint target = value;
            void** args = stackalloc void*[2];
            args[0] = &word;
            args[1] = &target;
            CudaDriver.Launch(_spinKernel, stream, 1, args);
            return;
        }
        CudaDriver.StreamWaitValue32(stream, _device, value, CudaDriver.WaitValueGeq);
    }

    /// <summary>
    /// Raises the counter to <paramref name="value"/> after every store this thread made before (the exchange is a full
    /// fence). Never lowers it: a late raise of an older value leaves a newer one in place (wrap-around compare).
    /// </summary>
    public void Raise(uint value)
    {
        ref uint word = ref *(uint*)Host;
        uint seen = Volatile.Read(ref word);
        while (unchecked((int)(value - seen)) > 0)
        {
            uint was = Interlocked.CompareExchange(ref word, value, seen);
            if (was == seen) return;
            seen = was;
        }
        Interlocked.MemoryBarrier();
    }

    private IntPtr Host => _host != IntPtr.Zero ? _host : throw new ObjectDisposedException(nameof(HostSignal));

    /// <summary>Frees the word. Nothing may still wait on it: raise it past every queued wait and let the device drain first.</summary>
    public void Dispose()
    {
        if (_host == IntPtr.Zero) return;
        IntPtr h = _host;
        _host = IntPtr.Zero;
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.FreeHost(h), "cudaFreeHost");
    }
}

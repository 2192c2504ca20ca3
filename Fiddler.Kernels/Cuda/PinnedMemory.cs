namespace Fiddler.Kernels.Cuda;

/// <summary>
/// Page-locking host memory that torch did not allocate (a memory-mapped checkpoint, a native or managed buffer), so
/// cudaMemcpyAsync from it is a real asynchronous DMA (about 55 GB/s H2D on the H100 host, against about 7 from
/// pageable memory, which is also synchronous for the host). Registering and unregistering are slow (they walk and pin
/// every page: do it once, at load) and may synchronise the device; never register inside the decode loop.
/// </summary>
public static class PinnedMemory
{
    /// <summary>
    /// cudaHostRegister. For a read-only mapping (e.g. a safetensors file mapped with read access) pass
    /// <see cref="CudaHostRegisterFlags.ReadOnly"/>. A managed array must stay pinned (GCHandle / fixed / POH) while registered.
    /// </summary>
    public static void Register(IntPtr ptr, long bytes, CudaHostRegisterFlags flags = CudaHostRegisterFlags.Default)
    {
        if (ptr == IntPtr.Zero) throw new ArgumentException("null host pointer", nameof(ptr));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        CudaRuntime.HostRegister(ptr, bytes, flags);
    }

    /// <summary>cudaHostUnregister: <paramref name="ptr"/> must be the start of a registered range.</summary>
    public static void Unregister(IntPtr ptr)
    {
        if (ptr == IntPtr.Zero) throw new ArgumentException("null host pointer", nameof(ptr));
        CudaRuntime.HostUnregister(ptr);
    }

    /// <summary>Registers now and unregisters on dispose.</summary>
    public static PinnedRegistration Pin(IntPtr ptr, long bytes, CudaHostRegisterFlags flags = CudaHostRegisterFlags.Default)
    {
        Register(ptr, bytes, flags);
        return new PinnedRegistration(ptr, bytes);
    }
}

/// <summary>A host range registered with CUDA; unregistered on dispose (after copies from it are done: the caller's job).</summary>
public sealed unsafe class PinnedRegistration : IDisposable
{
    private bool _disposed;

    internal PinnedRegistration(IntPtr ptr, long bytes)
    {
        Pointer = ptr;
        Bytes = bytes;
    }

    public IntPtr Pointer { get; }

    public long Bytes { get; }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.HostUnregister(Pointer), "cudaHostUnregister");
    }
}

/// <summary>
/// Page-locked host memory from cudaHostAlloc, owned here (not by torch's caching host allocator). Dispose it only when
/// no copy from or to it is pending (e.g. after <see cref="WeightStager.WaitForCopy"/>); allocate up front, since
/// cudaHostAlloc and cudaFreeHost are slow and may synchronise the device.
/// </summary>
public sealed unsafe class PinnedBuffer : IDisposable
{
    private IntPtr _pointer;

    public PinnedBuffer(long bytes, CudaHostAllocFlags flags = CudaHostAllocFlags.Portable)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        _pointer = CudaRuntime.HostAlloc(bytes, flags);
        Bytes = bytes;
    }

    public IntPtr Pointer => _pointer != IntPtr.Zero ? _pointer : throw new ObjectDisposedException(nameof(PinnedBuffer));

    public long Bytes { get; }

    /// <summary>The bytes as a span (only for buffers under 2 GiB; use <see cref="Pointer"/> otherwise).</summary>
    public Span<byte> AsSpan() => Bytes <= int.MaxValue ? new Span<byte>((void*)Pointer, (int)Bytes)
        : throw new InvalidOperationException($"{Bytes} bytes do not fit one span");

    public void Dispose()
    {
        if (_pointer == IntPtr.Zero) return;
        IntPtr p = _pointer;
        _pointer = IntPtr.Zero;
        CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.FreeHost(p), "cudaFreeHost");
    }
}

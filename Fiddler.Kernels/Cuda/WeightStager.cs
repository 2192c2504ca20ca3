using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Cuda;

/// <summary>One expert's weight shapes: w1 (gate) [I, H], w3 (up) [I, H], w2 (down) [H, I], all of one dtype.</summary>
public readonly record struct ExpertShape(long Hidden, long Intermediate, ScalarType DType)
{
    /// <summary>Mixtral-8x7B: H 4096, I 14336, bf16: 117,440,512 bytes per matrix, 352,321,536 per expert.</summary>
    public static ExpertShape Mixtral8x7B => new(4096, 14336, ScalarType.BFloat16);

    public int ElementSize => ElementSizeOf(DType);

    public long[] W1Shape => [Intermediate, Hidden];
    public long[] W3Shape => [Intermediate, Hidden];
    public long[] W2Shape => [Hidden, Intermediate];

    public long W1Bytes => checked(Intermediate * Hidden * ElementSize);
    public long W3Bytes => W1Bytes;
    public long W2Bytes => W1Bytes;
    public long TotalBytes => checked(W1Bytes + W3Bytes + W2Bytes);

    public void Validate()
    {
        if (Hidden <= 0 || Intermediate <= 0)
            throw new ArgumentOutOfRangeException(nameof(Hidden), $"expert shape must be positive (hidden {Hidden}, intermediate {Intermediate})");
        _ = ElementSize;
        _ = TotalBytes;
    }

    public static int ElementSizeOf(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Int16 => 2,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Int8 or ScalarType.Byte or ScalarType.Bool => 1,
        _ => throw new ArgumentException($"unsupported expert dtype {dtype}"),
    };
}

/// <summary>
/// Where one expert's three matrices are in host memory (addresses of contiguous row-major data in
/// <see cref="ExpertShape"/>'s layout). Page-locked memory is needed for the copy to be asynchronous (torch
/// <c>pin_memory()</c>, <see cref="PinnedBuffer"/>, or <see cref="PinnedMemory.Register"/>ed). The memory must stay
/// valid and unchanged until the copy is done (<see cref="WeightStager.IsCopyComplete"/> / <see cref="WeightStager.WaitForCopy"/>).
/// </summary>
public readonly record struct HostExpert(IntPtr W1, IntPtr W3, IntPtr W2, long W1Bytes, long W3Bytes, long W2Bytes)
{
    public long TotalBytes => W1Bytes + W3Bytes + W2Bytes;

    /// <summary>Bytes between consecutive rows of w2 in host memory; 0 when w2 is contiguous. Set for a slice of an
    /// expert's intermediate rows, whose w2 part is a column block (see <see cref="Slice"/>).</summary>
    public long W2Pitch { get; init; }

    /// <summary>The hidden size (w1's row length) when known (from tensors), so a stager can refuse an expert of another
    /// shape whose byte sizes happen to fit; 0 when only byte sizes are known (<see cref="Packed"/>, raw pointers).</summary>
    public long Hidden { get; init; }

    /// <summary>
    /// How many intermediate rows this expert (or slice) holds in a slot of <paramref name="slot"/>'s shape; throws
    /// <see cref="ArgumentException"/> when it is neither the whole expert nor a slice of its rows.
    /// </summary>
    public long RowsIn(ExpertShape slot)
    {
        long rowBytes = slot.Hidden * slot.ElementSize;
        long rows = W1Bytes / rowBytes;
        if ((Hidden != 0 && Hidden != slot.Hidden) || W1Bytes != W3Bytes || W1Bytes % rowBytes != 0 || rows < 1 || rows > slot.Intermediate
            || W2Bytes != rows * rowBytes || (W2Pitch != 0 && W2Pitch < rows * slot.ElementSize))
            throw new ArgumentException($"host expert sizes {W1Bytes}/{W3Bytes}/{W2Bytes} bytes (w2 pitch {W2Pitch}" +
                (Hidden != 0 ? $", hidden {Hidden}" : "") + $") are neither the slot's {slot.W1Bytes}/{slot.W3Bytes}/{slot.W2Bytes} " +
                $"({slot}) nor a slice of its intermediate rows");
        return rows;
    }

    /// <summary>
    /// Intermediate rows [<paramref name="start"/>, start + <paramref name="rows"/>) of an expert in host tensors
    /// (w1/w3 [I, H] and w2 [H, I], contiguous, pinned unless <paramref name="requirePinned"/> is false): w1/w3 rows are
    /// contiguous, the w2 columns are strided (copied with a 2-D copy into a contiguous [H, rows] block).
    /// </summary>
    public static HostExpert Slice(Tensor w1, Tensor w3, Tensor w2, int start, int rows, bool requirePinned = true)
    {
        var whole = FromTensors(w1, w3, w2, requirePinned);
        long hidden = w1.size(1), intermediate = w1.size(0), es = w1.element_size();
        if (start < 0 || rows < 1 || start + rows > intermediate)
            throw new ArgumentOutOfRangeException(nameof(rows), $"rows [{start}, {start + rows}) outside the expert's {intermediate}");
        long rowBytes = hidden * es;
        return new HostExpert(whole.W1 + (nint)(start * rowBytes), whole.W3 + (nint)(start * rowBytes), whole.W2 + (nint)(start * es),
            rows * rowBytes, rows * rowBytes, hidden * rows * es) { W2Pitch = intermediate * es, Hidden = hidden };
    }

    /// <summary>From three CPU tensors (contiguous, in the expert's shapes; pinned unless <paramref name="requirePinned"/> is false).</summary>
    public static HostExpert FromTensors(Tensor w1, Tensor w3, Tensor w2, bool requirePinned = true)
    {
        foreach (var (t, name) in new[] { (w1, "w1"), (w3, "w3"), (w2, "w2") })
        {
            if (t.device_type != DeviceType.CPU) throw new ArgumentException($"{name} is on {t.device}, not in host memory");
            if (!t.is_contiguous()) throw new ArgumentException($"{name} is not contiguous");
            if (requirePinned && !t.is_pinned()) throw new ArgumentException($"{name} is not in pinned memory (use pin_memory())");
        }
        if (!w1.Dims().SequenceEqual(w3.Dims())) throw new ArgumentException($"w1 {Shape(w1)} and w3 {Shape(w3)} differ in shape");
        if (w1.dim() != 2 || w2.dim() != 2 || w2.size(0) != w1.size(1) || w2.size(1) != w1.size(0))
            throw new ArgumentException($"w1 {Shape(w1)} / w2 {Shape(w2)} are not [I,H] / [H,I]");
        if (w1.dtype != w3.dtype || w1.dtype != w2.dtype) throw new ArgumentException("w1, w3, w2 differ in dtype");
        return new HostExpert(TensorMemory.DataPtr(w1), TensorMemory.DataPtr(w3), TensorMemory.DataPtr(w2),
            Bytes(w1), Bytes(w3), Bytes(w2)) { Hidden = w1.size(1) };
    }

    /// <summary>w1, w3, w2 back to back from <paramref name="start"/> (one packed host block per expert).</summary>
    public static HostExpert Packed(IntPtr start, ExpertShape shape) =>
        new(start, start + (nint)shape.W1Bytes, start + (nint)(shape.W1Bytes + shape.W3Bytes), shape.W1Bytes, shape.W3Bytes, shape.W2Bytes);

    private static long Bytes(Tensor t) => t.numel() * t.element_size();

    private static string Shape(Tensor t) => "[" + string.Join(",", t.shape) + "]";
}

/// <summary>
/// One expert whose weights were queued into a GPU slot by <see cref="WeightStager.Begin"/>. The tensors belong to the
/// stager's slot (never dispose them); they hold this expert's weights once the copy is done, which torch ops see
/// only after <see cref="WeightStager.MakeDefaultStreamWait"/>, and until the slot is <see cref="WeightStager.Release"/>d.
/// </summary>
public readonly struct StagedExpert
{
    internal StagedExpert(WeightStager owner, int slot, long ticket, Tensor w1, Tensor w3, Tensor w2, long bytes)
    {
        Owner = owner;
        Slot = slot;
        Ticket = ticket;
        W1 = w1;
        W3 = w3;
        W2 = w2;
        Bytes = bytes;
    }

    internal WeightStager? Owner { get; }

    public int Slot { get; }

    /// <summary>Which use of the slot this is (counts up per <see cref="WeightStager.Begin"/>); stale handles are refused.</summary>
    public long Ticket { get; }

    /// <summary>gate_proj [I, H].</summary>
    public Tensor W1 { get; }

    /// <summary>up_proj [I, H].</summary>
    public Tensor W3 { get; }

    /// <summary>down_proj [H, I].</summary>
    public Tensor W2 { get; }

    public long Bytes { get; }
}

/// <summary>
/// The host→GPU weight-transfer engine: one non-blocking copy stream and <see cref="SlotCount"/> GPU slots, each three
/// tensors shaped like one expert (allocated once, reused). Copies overlap torch's compute on the default stream and
/// the host's own work; ordering between the two streams is explicit, with events, in both directions:
/// <list type="bullet">
/// <item>copy after compute: <see cref="Release"/> records the slot's "free" event on the default stream after the ops
///   that read the slot were queued; the next <see cref="Begin"/> into that slot makes the copy stream wait for it, so a
///   queued kernel never sees its weights overwritten;</item>
/// <item>compute after copy: <see cref="Begin"/> records the slot's "ready" event on the copy stream after the three
///   copies; <see cref="MakeDefaultStreamWait"/> makes the default stream wait for it, so torch ops queued afterwards see
///   the weights, without blocking the host.</item>
/// </list>
/// Per slot the protocol is Begin → MakeDefaultStreamWait → (queue torch ops on W1/W3/W2) → Release → Begin ...;
/// Begin on a slot not yet released throws. Not thread-safe: drive it from one thread (the MoE layer's).
/// </summary>
public sealed unsafe class WeightStager : IDisposable
{
    private sealed class SlotState(Tensor w1, Tensor w3, Tensor w2, CudaEvent ready, CudaEvent free)
    {
        public readonly Tensor W1 = w1, W3 = w3, W2 = w2;
        public readonly IntPtr D1 = TensorMemory.DataPtr(w1), D3 = TensorMemory.DataPtr(w3), D2 = TensorMemory.DataPtr(w2);
        public readonly CudaEvent Ready = ready, Free = free;
        public bool InUse;
        public long Ticket;
    }

    private readonly SlotState[] _slots = [];
    private readonly CudaStream? _copyStream;
    private bool _disposed;

    /// <param name="device">A CUDA torch device ("cuda" means torch's current device).</param>
    /// <param name="shape">The expert shape and dtype every slot holds.</param>
    /// <param name="slotCount">GPU slots (K): how many experts can be in flight or in use at once. 2 is double buffering.</param>
    public WeightStager(Device device, ExpertShape shape, int slotCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slotCount);
        shape.Validate();
        _ = CudaRuntime.Library; // throws CudaUnavailableException with the reason when there is no libcudart
        if (device.type != DeviceType.CUDA) throw new ArgumentException($"WeightStager needs a CUDA device, not {device}");
        Shape = shape;
        Device = device;
        DeviceIndex = device.index >= 0 ? device.index : CudaRuntime.GetDevice();
        var slots = new List<SlotState>();
        try
        {
            using var scope = CudaRuntime.UseDevice(DeviceIndex);
            var dev = torch.device(DeviceType.CUDA, DeviceIndex);
            _copyStream = CudaStream.Create(DeviceIndex);
            for (int i = 0; i < slotCount; i++)
            {
                slots.Add(NewSlot(shape, dev, DeviceIndex));
                // Free from the start, but only after whatever the default stream was doing with this memory before.
                slots[^1].Free.Record(CudaRuntime.LegacyDefaultStream);
            }
            _slots = slots.ToArray();
        }
        catch
        {
            foreach (var s in slots) DisposeSlot(s);
            _copyStream?.Dispose();
            throw;
        }
    }

    public ExpertShape Shape { get; }

    public Device Device { get; }

    /// <summary>The CUDA ordinal of <see cref="Device"/>.</summary>
    public int DeviceIndex { get; }

    public int SlotCount => _slots.Length;

    /// <summary>The non-blocking stream the copies run on (e.g. to record timing events around them).</summary>
    public CudaStream CopyStream => !_disposed && _copyStream is not null ? _copyStream : throw new ObjectDisposedException(nameof(WeightStager));

    /// <summary>Bytes queued for host→device copy since construction or <see cref="ResetCounters"/> (PCIe traffic).</summary>
    public long BytesTransferred { get; private set; }

    /// <summary>Experts queued since construction or <see cref="ResetCounters"/>.</summary>
    public long TransferCount { get; private set; }

    public void ResetCounters() => (BytesTransferred, TransferCount) = (0, 0);

    /// <summary>True between <see cref="Begin"/> and <see cref="Release"/> of the slot.</summary>
    public bool IsInUse(int slot) => Get(slot).InUse;

    /// <summary>A free slot, or -1 when all are in use.</summary>
    public int FindFreeSlot()
    {
        for (int i = 0; i < _slots.Length; i++)
            if (!_slots[i].InUse) return i;
        return -1;
    }

    /// <summary>The slot's tensors (w1, w3, w2), owned by the stager. For inspection; write to them only outside the Begin..Release protocol.</summary>
    public (Tensor W1, Tensor W3, Tensor W2) SlotTensors(int slot)
    {
        var s = Get(slot);
        return (s.W1, s.W3, s.W2);
    }

    /// <summary>
    /// Queues the copy of <paramref name="host"/> into <paramref name="slot"/> on the copy stream and returns at once
    /// (the host is not blocked when the source is page-locked). The copy starts on the device only after the slot's last
    /// <see cref="Release"/> point on the default stream has been reached.
    /// </summary>
    public StagedExpert Begin(int slot, in HostExpert host)
    {
        var s = Get(slot);
        if (s.InUse) throw new InvalidOperationException($"slot {slot} is still in use: Release it before staging into it again");
        if (host.W1 == IntPtr.Zero || host.W3 == IntPtr.Zero || host.W2 == IntPtr.Zero) throw new ArgumentException("null host pointer in the expert");
        // A whole expert, or a slice of its intermediate rows (w1/w3 rows [a, a+r), w2 columns [a, a+r)).
        long rows = host.RowsIn(Shape);
        var stream = CopyStream.Handle;
        using (CudaRuntime.UseDevice(DeviceIndex))
        {
            CudaRuntime.StreamWaitEvent(stream, s.Free.Handle);
            CudaRuntime.MemcpyAsync(s.D1, host.W1, host.W1Bytes, CudaMemcpyKind.HostToDevice, stream);
            CudaRuntime.MemcpyAsync(s.D3, host.W3, host.W3Bytes, CudaMemcpyKind.HostToDevice, stream);
            long w2Row = rows * Shape.ElementSize;
            if (host.W2Pitch == 0 || host.W2Pitch == w2Row)
                CudaRuntime.MemcpyAsync(s.D2, host.W2, host.W2Bytes, CudaMemcpyKind.HostToDevice, stream);
            else
                CudaRuntime.Memcpy2DAsync(s.D2, w2Row, host.W2, host.W2Pitch, w2Row, Shape.Hidden, CudaMemcpyKind.HostToDevice, stream);
            s.Ready.Record(stream);
        }
        var (w1, w3, w2) = rows == Shape.Intermediate ? (s.W1, s.W3, s.W2)
            // Views of the slot's prefix; they own no memory (the caller's dispose scope may free the handles).
            : (s.W1.narrow(0, 0, rows), s.W3.narrow(0, 0, rows), s.W2.view(-1).narrow(0, 0, Shape.Hidden * rows).view(Shape.Hidden, rows));
        s.InUse = true;
        s.Ticket++;
        BytesTransferred += host.TotalBytes;
        TransferCount++;
        return new StagedExpert(this, slot, s.Ticket, w1, w3, w2, host.TotalBytes);
    }

    /// <summary>
    /// Makes the default stream (torch's) wait, on the device, for the staged copy: torch ops queued after this call see
    /// the weights; ops queued before it are not held up; the host does not block. Call it as late as possible: after
    /// queuing the default-stream work that does not need this expert.
    /// </summary>
    public void MakeDefaultStreamWait(in StagedExpert staged)
    {
        var s = Current(staged);
        using (CudaRuntime.UseDevice(DeviceIndex)) CudaRuntime.StreamWaitEvent(CudaRuntime.LegacyDefaultStream, s.Ready.Handle);
    }

    /// <summary>Whether the staged copy has finished (host-side poll; the host memory may then be reused).</summary>
    public bool IsCopyComplete(in StagedExpert staged) => Current(staged).Ready.IsComplete;

    /// <summary>Blocks the host until the staged copy has finished.</summary>
    public void WaitForCopy(in StagedExpert staged) => Current(staged).Ready.Synchronize();

    /// <summary>
    /// Ends the slot's use: records its "free" event on the default stream, after every torch op queued so far (queue
    /// the ops that read the slot first). The next <see cref="Begin"/> into it waits for that point on the device.
    /// </summary>
    public void Release(int slot)
    {
        var s = Get(slot);
        if (!s.InUse) throw new InvalidOperationException($"slot {slot} is not in use");
        using (CudaRuntime.UseDevice(DeviceIndex)) s.Free.Record(CudaRuntime.LegacyDefaultStream);
        s.InUse = false;
    }

    /// <summary>Blocks the host until every queued copy is done.</summary>
    public void Synchronize() => CopyStream.Synchronize();

    private SlotState Get(int slot)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)slot >= (uint)_slots.Length) throw new ArgumentOutOfRangeException(nameof(slot), $"slot {slot} of {_slots.Length}");
        return _slots[slot];
    }

    private SlotState Current(in StagedExpert staged)
    {
        if (!ReferenceEquals(staged.Owner, this)) throw new ArgumentException("this staged expert belongs to another stager (or is default)");
        var s = Get(staged.Slot);
        if (!s.InUse || s.Ticket != staged.Ticket) throw new InvalidOperationException($"slot {staged.Slot} was released or restaged since this expert was staged");
        return s;
    }

    /// <summary>
    /// Waits for the queued copies, then frees the stream and the slots. A failed wait (a device fault) is rethrown after
    /// everything is freed: the stream, events and slot tensors are given back either way.
    /// </summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            // Copies may still be writing into the slots: let them finish before torch can hand the memory to others.
            if (_copyStream is not null)
                CudaRuntime.CheckUnlessShuttingDown(CudaRuntime.Library.StreamSynchronize(_copyStream.Handle), "cudaStreamSynchronize");
        }
        finally
        {
            _copyStream?.Dispose();
            foreach (var s in _slots) DisposeSlot(s);
        }
    }

    /// <summary>One slot's tensors and events; what was made before a failure (out of GPU memory, say) is freed.</summary>
    private static SlotState NewSlot(ExpertShape shape, Device dev, int deviceIndex)
    {
        var made = new List<IDisposable>();
        try
        {
            T Made<T>(T item) where T : IDisposable { made.Add(item); return item; }
            return new SlotState(Made(empty(shape.W1Shape, shape.DType, dev)), Made(empty(shape.W3Shape, shape.DType, dev)),
                Made(empty(shape.W2Shape, shape.DType, dev)), Made(CudaEvent.Create(deviceIndex)), Made(CudaEvent.Create(deviceIndex)));
        }
        catch
        {
            foreach (var m in made) m.Dispose();
            throw;
        }
    }

    private static void DisposeSlot(SlotState s)
    {
        foreach (var d in new IDisposable[] { s.Ready, s.Free, s.W1, s.W3, s.W2 })
            try { d.Dispose(); } catch (Exception) { /* the rest are still freed */ }
    }
}

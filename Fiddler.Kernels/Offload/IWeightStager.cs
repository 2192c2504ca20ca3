using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>An expert's weights as staged on the compute device: w1 (gate) [I, H], w3 (up) [I, H], w2 (down) [H, I].</summary>
public sealed record StagedWeights(int Slot, Tensor W1, Tensor W3, Tensor W2, object? Ticket = null);

/// <summary>
/// Copies host-resident expert weights into reusable slots on the compute device. The CUDA implementation overlaps
/// the copies with compute on a stream of its own; <see cref="CopyStager"/> copies synchronously (CPU-only runs, tests).
/// </summary>
public interface IWeightStager : IDisposable
{
    int Slots { get; }

    /// <summary>Starts copying into <paramref name="slot"/> and returns without waiting for the copy.</summary>
    StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2);

    /// <summary>Makes compute queued after this call see the staged weights (on CUDA: the device waits, not the host).</summary>
    void Await(StagedWeights staged);

    /// <summary>Marks the slot reusable once the ops already queued on it have run.</summary>
    void Release(int slot);

    long BytesCopied { get; }
}

/// <summary>Synchronous staging by <c>copy_</c> into preallocated tensors: the same code path without CUDA streams.</summary>
public sealed class CopyStager : IWeightStager
{
    private readonly StagedWeights[] _slots;

    public CopyStager(int slots, long hidden, long intermediate, ScalarType dtype, Device device)
    {
        _slots = Enumerable.Range(0, slots).Select(i => new StagedWeights(i,
            empty([intermediate, hidden], dtype, device), empty([intermediate, hidden], dtype, device),
            empty([hidden, intermediate], dtype, device))).ToArray();
    }

    public int Slots => _slots.Length;
    public long BytesCopied { get; private set; }

    public StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2)
    {
        var s = _slots[slot];
        s.W1.copy_(w1); s.W3.copy_(w3); s.W2.copy_(w2);
        BytesCopied += (w1.NumberOfElements + w3.NumberOfElements + w2.NumberOfElements) * w1.ElementSize;
        return s;
    }

    public void Await(StagedWeights staged) { }

    public void Release(int slot) { }

    public void Dispose()
    {
        foreach (var s in _slots) { s.W1.Dispose(); s.W3.Dispose(); s.W2.Dispose(); }
    }
}

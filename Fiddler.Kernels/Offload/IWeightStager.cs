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

    /// <summary>
    /// Starts copying the expert (w1/w3 [I, H], w2 [H, I] in host memory) into <paramref name="slot"/> and returns without
    /// waiting for the copy. With <paramref name="rows"/>, only intermediate rows [start, start + rows): the staged
    /// tensors are then [rows, H], [rows, H] and [H, rows] (the GPU half of a CPU/GPU split).
    /// </summary>
    StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2, int start = 0, int? rows = null);

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

    public StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2, int start = 0, int? rows = null)
    {
        var s = _slots[slot];
        long hidden = w1.size(1), intermediate = w1.size(0);
        long r = rows ?? intermediate;
        if (start < 0 || r < 1 || start + r > intermediate || intermediate > s.W1.size(0) || hidden != s.W1.size(1))
            throw new ArgumentException($"rows [{start}, {start + r}) of an expert [{intermediate}, {hidden}] do not fit slot {slot}");
        if (r == intermediate)
        {
            s.W1.copy_(w1); s.W3.copy_(w3); s.W2.copy_(w2);
            BytesCopied += 3 * w1.NumberOfElements * w1.ElementSize;
            return s;
        }
        // Views of the slot's prefix (the same layout as the CUDA stager's: w2's column block made contiguous).
        var (d1, d3, d2) = (s.W1.narrow(0, 0, r), s.W3.narrow(0, 0, r), s.W2.view(-1).narrow(0, 0, hidden * r).view(hidden, r));
        d1.copy_(w1.narrow(0, start, r)); d3.copy_(w3.narrow(0, start, r)); d2.copy_(w2.narrow(1, start, r));
        BytesCopied += 3 * hidden * r * w1.ElementSize;
        return new StagedWeights(slot, d1, d3, d2);
    }

    public void Await(StagedWeights staged) { }

    public void Release(int slot) { }

    public void Dispose()
    {
        foreach (var s in _slots) { s.W1.Dispose(); s.W3.Dispose(); s.W2.Dispose(); }
    }
}

using static TorchSharp.torch;

namespace Fiddler.Kernels.Cache;

/// <summary>
/// Preallocated key/value cache for every layer, written by position (gpt-fast style; never concatenated per token).
/// Shape per layer: [B, kv_heads, capacity, head_dim]. One owner: whoever runs the generation disposes it.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _keys;
    private readonly Tensor[] _values;

    public KvCache(int layers, long batch, long kvHeads, long capacity, long headDim, ScalarType dtype, Device device)
    {
        if (capacity <= 0) throw new ArgumentOutOfRangeException(nameof(capacity), "KV cache capacity must be > 0");
        Capacity = capacity;
        Batch = batch;
        _keys = new Tensor[layers];
        _values = new Tensor[layers];
        for (int i = 0; i < layers; i++)
        {
            _keys[i] = zeros([batch, kvHeads, capacity, headDim], dtype, device);
            _values[i] = zeros([batch, kvHeads, capacity, headDim], dtype, device);
        }
    }

    public long Capacity { get; }
    public long Batch { get; }
    public int Layers => _keys.Length;

    /// <summary>Tokens whose keys are in the cache (positions 0..Length-1). Advanced by the model after a forward.</summary>
    public long Length { get; private set; }

    public long BytesPerToken => _keys.Sum(k => 2 * k.ElementSize * k.size(0) * k.size(1) * k.size(3));

    /// <summary>Writes k, v [B, kv_heads, T, Dh] at positions start..start+T-1 of one layer.</summary>
    public void Write(int layer, long start, Tensor k, Tensor v)
    {
        long t = k.size(2);
        if (start + t > Capacity)
            throw new InvalidOperationException($"KV cache full: positions {start}..{start + t - 1} exceed capacity {Capacity}");
        _keys[layer].narrow(2, start, t).copy_(k);
        _values[layer].narrow(2, start, t).copy_(v);
    }

    /// <summary>Views of positions from..to-1 of one layer (no copy).</summary>
    public (Tensor K, Tensor V) Read(int layer, long from, long to) =>
        (_keys[layer].narrow(2, from, to - from), _values[layer].narrow(2, from, to - from));

    public void Advance(long tokens)
    {
        if (Length + tokens > Capacity) throw new InvalidOperationException("KV cache overflow");
        Length += tokens;
    }

    /// <summary>Forget everything after <paramref name="length"/> tokens (e.g. to reuse the cache for a new prompt).</summary>
    public void Truncate(long length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
    }

    /// <summary>
    /// Reorders batch rows (beam search): row i takes the old row <paramref name="rows"/>[i]. Only the filled positions
    /// move (0..Length-1; the rest are written before they are read), and an order that keeps every row is free.
    /// </summary>
    public void Reorder(Tensor rows)
    {
        if (Length == 0) return;
        long[] order = Runtime.HostReadback.Longs(rows);
        if (order.Length == Batch && order.Select((r, i) => r == i).All(same => same)) return;
        using var onDevice = rows.to(_keys[0].device);
        for (int i = 0; i < _keys.Length; i++)
        {
            using var filledK = _keys[i].narrow(2, 0, Length);
            using var filledV = _values[i].narrow(2, 0, Length);
            using var k = filledK.index_select(0, onDevice);
            using var v = filledV.index_select(0, onDevice);
            filledK.copy_(k);
            filledV.copy_(v);
        }
    }

    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}

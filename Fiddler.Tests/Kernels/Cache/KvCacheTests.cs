using Fiddler.Kernels.Cache;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Cache;

public sealed class KvCacheTests
{
    /// <summary>A cache of 3 rows whose filled positions hold their row's number (+100 for values), the rest −1.</summary>
    private static KvCache Filled(long length, long capacity)
    {
        var cache = new KvCache(layers: 2, batch: 3, kvHeads: 2, capacity: capacity, headDim: 4, ScalarType.Float32, CPU);
        for (int layer = 0; layer < 2; layer++)
        {
            var (k, v) = cache.Read(layer, 0, capacity);
            k.fill_(-1);
            v.fill_(-1);
            using var rows = arange(3, ScalarType.Float32).view(3, 1, 1, 1).expand(3, 2, length, 4).contiguous();
            using var values = rows + 100;
            cache.Write(layer, 0, rows, values);
        }
        cache.Advance(length);
        return cache;
    }

    private static float[] RowOf(KvCache cache, int layer, bool values, long from, long to)
    {
        var (k, v) = cache.Read(layer, from, to);
        var t = values ? v : k;
        return [.. Enumerable.Range(0, 3).Select(r => t[r].mean().item<float>())];
    }

    [Fact]
    public void Reorder_MovesEveryLayersFilledPositionsByRow()
    {
        using var cache = Filled(length: 5, capacity: 16);
        using var order = tensor(new long[] { 2, 2, 0 });
        cache.Reorder(order);
        for (int layer = 0; layer < 2; layer++)
        {
            Assert.Equal([2f, 2f, 0f], RowOf(cache, layer, values: false, 0, 5));
            Assert.Equal([102f, 102f, 100f], RowOf(cache, layer, values: true, 0, 5));
            // Positions past the filled ones are not copied (they are written before they are read).
            Assert.Equal([-1f, -1f, -1f], RowOf(cache, layer, values: false, 5, 16));
        }
    }

    [Fact]
    public void Reorder_IdentityOrEmptyCache_LeavesEverythingInPlace()
    {
        using var cache = Filled(length: 3, capacity: 8);
        using var identity = tensor(new long[] { 0, 1, 2 });
        cache.Reorder(identity);
        Assert.Equal([0f, 1f, 2f], RowOf(cache, 1, values: false, 0, 3));

        using var empty = new KvCache(1, 3, 2, 8, 4, ScalarType.Float32, CPU);
        using var order = tensor(new long[] { 2, 1, 0 });
        empty.Reorder(order); // nothing filled: nothing to move
        Assert.Equal(0, empty.Length);
    }
}

using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

// n=rows of the CPU lane D=hidden

/// <summary>
/// The CPU lane's input and output rows in host memory, reused by every layer. On CUDA they are page-locked (allocated
/// once, grown when a layer needs more rows): the rows come down with one non-blocking copy that the host waits for on
/// a blocking-sync event (polling first, <see cref="Runtime.HostReadback.SpinMicroseconds"/>), and the results go back with a
/// non-blocking copy. Reuse is safe without double-buffering: a layer's lane starts only after the host read that
/// layer's routing, which the device produced after every copy queued for the previous layer.
/// <para>
/// A decode layer's rows can come down before that (<see cref="Prefetch"/>): queued ahead of the routing read-back, they
/// arrive with it, and the lane starts without a second device round trip.
/// </para>
/// </summary>
internal sealed class LaneBuffers : IDisposable
{
    private Tensor? _x, _y, _prefetch;
    private Tensor? _prefetchedFrom;
    private long _prefetchRows, _prefetchWidth; // _prefetch's shape, kept so the decode path asks libtorch less
    private CudaEvent? _copied;

    /// <summary>
    /// Queues every row of <paramref name="flat"/> [N, D] (on CUDA) for a non-blocking copy into page-locked memory, in
    /// its own dtype: <see cref="Take"/> for the same tensor then reads them there, once the caller has waited for work
    /// queued after this (the routing read-back), instead of copying and waiting again.
    /// </summary>
    public void Prefetch(Tensor flat)
    {
        long[] shape = flat.Dims();
        long n = shape[0], d = shape[1];
        if (_prefetch is null || n > _prefetchRows || d != _prefetchWidth || flat.dtype != _prefetch.dtype)
        {
            _prefetch?.Dispose();
            _prefetch = null;
            _prefetchRows = Math.Max(n, 16);
            _prefetchWidth = d;
            _prefetch = Pinned(_prefetchRows, d, flat.dtype);
        }
        using (var rows = _prefetch.narrow(0, 0, n)) rows.copy_(flat, true);
        _prefetchedFrom = flat;
    }

    /// <summary>
    /// Rows <paramref name="rows"/> of <paramref name="flat"/> [N, D] as fp32 [n, D] in host memory, and an fp32 output
    /// [<paramref name="outputRows"/>, D] beside it. Views of the shared buffers: valid until the next call; never dispose
    /// the buffers through them.
    /// </summary>
    public (Tensor X, Tensor Y) Take(Tensor flat, long[] rows, bool pinned, long outputRows)
    {
        long n = rows.Length, d = flat.size(1);
        if (!pinned)
        {
            // CPU device (or a blocking merge): plain tensors, freed by the caller's scope.
            _prefetchedFrom = null;
            var hostX = flat.to(ScalarType.Float32, CPU).index_select(0, tensor(rows));
            return (hostX, empty([outputRows, d], ScalarType.Float32));
        }
        if (_x is null || _y is null || _x.size(0) < n || _y.size(0) < outputRows || _x.size(1) != d)
        {
            ReleaseLane();
            long capacity = Math.Max(Math.Max(n, outputRows), 16);
            _x = Pinned(capacity, d, ScalarType.Float32);
            _y = Pinned(capacity, d, ScalarType.Float32);
        }
        using var scope = NewDisposeScope();
        var x = _x.narrow(0, 0, n);
        bool prefetched = ReferenceEquals(flat, _prefetchedFrom);
        _prefetchedFrom = null;
        if (prefetched)
        {
            // The rows are in host memory already (the caller waited for the routing, queued after them): cast on the host.
            var all = _prefetch!.narrow(0, 0, flat.size(0));
            x.copy_(ExpertAssignment.IsEveryRowInOrder(rows, flat.size(0)) ? all : all.index_select(0, tensor(rows)));
            return (x.MoveToOuterDisposeScope(), _y.narrow(0, 0, outputRows).MoveToOuterDisposeScope());
        }
        _copied ??= CudaEvent.CreateBlocking(flat.device.index < 0 ? 0 : flat.device.index);
        // One decode token (every row, in order): no gather, one kernel fewer on the layer's serial path.
        var taken = ExpertAssignment.IsEveryRowInOrder(rows, flat.size(0)) ? flat : flat.index_select(0, DeviceIndices.Get(rows, flat.device));
        x.copy_(taken.to(ScalarType.Float32), true);
        _copied.RecordOnDefaultStream();
        Runtime.HostReadback.Wait(_copied);
        return (x.MoveToOuterDisposeScope(), _y.narrow(0, 0, outputRows).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Gives up the buffers without freeing them (a lane that may still write into them was abandoned): the next layer
    /// gets new ones; the caller frees these once that lane's jobs have ended.
    /// </summary>
    public Tensor[] Orphan()
    {
        Tensor[] given = [.. new[] { _x, _y }.OfType<Tensor>()];
        _x = _y = null;
        return given;
    }

    private static Tensor Pinned(long rows, long d, ScalarType dtype)
    {
        using var pageable = empty([rows, d], dtype);
        var t = pageable.pin_memory();
        t.DetachFromDisposeScope();
        return t;
    }

    private void ReleaseLane()
    {
        // torch's pinned allocator keeps a block until the copies queued from it have run.
        _x?.Dispose();
        _y?.Dispose();
        _x = _y = null;
    }

    public void Dispose()
    {
        ReleaseLane();
        _prefetch?.Dispose();
        _prefetch = null;
        _prefetchedFrom = null;
        _copied?.Dispose();
        _copied = null;
    }
}

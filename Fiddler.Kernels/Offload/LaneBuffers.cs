using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

// n=rows of the CPU lane D=hidden

/// <summary>
/// The CPU lane's input and output rows in host memory, reused by every layer. On CUDA they are page-locked (allocated
/// once, grown when a layer needs more rows): the rows come down with one non-blocking copy that the host waits for on
/// a blocking-sync event (after a short poll, <see cref="Runtime.HostReadback.SpinMicroseconds"/>, it sleeps rather than
/// spin a core the CPU experts could use), and the results go back with a
/// non-blocking copy. Reuse is safe without double-buffering: a layer's lane starts only after the host read that
/// layer's routing, which the device produced after every copy queued for the previous layer.
/// </summary>
internal sealed class LaneBuffers : IDisposable
{
    private Tensor? _x, _y;
    private CudaEvent? _copied;

    /// <summary>
    /// Rows <paramref name="rows"/> of <paramref name="flat"/> [N, D] as fp32 [n, D] in host memory, and an output [n, D]
    /// beside it. Views of the shared buffers: valid until the next call; never dispose the buffers through them.
    /// </summary>
    public (Tensor X, Tensor Y) Take(Tensor flat, long[] rows, bool pinned)
    {
        long n = rows.Length, d = flat.shape[1];
        if (!pinned)
        {
            // CPU device (or a blocking merge): plain tensors, freed by the caller's scope.
            var hostX = flat.to(ScalarType.Float32, CPU).index_select(0, tensor(rows));
            return (hostX, empty_like(hostX));
        }
        if (_x is null || _x.shape[0] < n || _x.shape[1] != d)
        {
            Release();
            long capacity = Math.Max(n, 16);
            _x = Pinned(capacity, d);
            _y = Pinned(capacity, d);
        }
        _copied ??= CudaEvent.CreateBlocking(flat.device.index < 0 ? 0 : flat.device.index);
        using var scope = NewDisposeScope();
        var x = _x.narrow(0, 0, n);
        // One decode token (every row, in order): no gather, one kernel fewer on the layer's serial path.
        var taken = ExpertAssignment.IsEveryRowInOrder(rows, flat.shape[0]) ? flat : flat.index_select(0, DeviceIndices.Get(rows, flat.device));
        x.copy_(taken.to(ScalarType.Float32), true);
        _copied.RecordOnDefaultStream();
        Runtime.HostReadback.Wait(_copied);
        return (x.MoveToOuterDisposeScope(), _y!.narrow(0, 0, n).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Gives up the buffers without freeing them (a lane that may still write into them was abandoned): the next layer
    /// gets new ones; these stay referenced by <paramref name="keep"/> for the process's life.
    /// </summary>
    public void Orphan(List<Tensor> keep)
    {
        lock (keep)
        {
            if (_x is not null) keep.Add(_x);
            if (_y is not null) keep.Add(_y);
        }
        _x = _y = null;
    }

    private static Tensor Pinned(long rows, long d)
    {
        using var pageable = empty([rows, d], ScalarType.Float32);
        var t = pageable.pin_memory();
        t.DetachFromDisposeScope();
        return t;
    }

    private void Release()
    {
        // torch's pinned allocator keeps a block until the copies queued from it have run.
        _x?.Dispose();
        _y?.Dispose();
        _x = _y = null;
    }

    public void Dispose()
    {
        Release();
        _copied?.Dispose();
        _copied = null;
    }
}

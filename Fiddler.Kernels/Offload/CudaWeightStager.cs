using Fiddler.Kernels.Cuda;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>
/// <see cref="IWeightStager"/> over the CUDA <see cref="WeightStager"/>: copies on a stream of their own, the default
/// stream (where TorchSharp's ops run) waits on the device for each copy, and a slot is refilled only after the
/// compute that read it. Host experts must be in page-locked memory.
/// </summary>
public sealed class CudaWeightStager(WeightStager inner) : IWeightStager
{
    public int Slots => inner.SlotCount;
    public long BytesCopied => inner.BytesTransferred;

    public StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2, int start = 0, int? rows = null)
    {
        var host = rows is int r && r != w1.size(0) ? HostExpert.Slice(w1, w3, w2, start, r) : HostExpert.FromTensors(w1, w3, w2);
        var staged = inner.Begin(slot, host);
        return new StagedWeights(slot, staged.W1, staged.W3, staged.W2, staged);
    }

    public void Await(StagedWeights staged) => inner.MakeDefaultStreamWait((StagedExpert)staged.Ticket!);

    public void Release(int slot) => inner.Release(slot);

    public void Dispose() => inner.Dispose();
}

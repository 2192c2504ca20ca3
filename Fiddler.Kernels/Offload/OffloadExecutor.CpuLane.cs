using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

// The CPU lane's side of the executor: merging its results, the gate the device waits on, collecting a gated lane.
public sealed partial class OffloadExecutor
{
    /// <summary>
    /// Collects the CPU lane a gated layer left running (a no-op when none): waits for it (it has finished by the time
    /// the device passed its wait), reports the layer to the scheduler, frees its buffers, and rethrows its failure.
    /// </summary>
    public void Complete()
    {
        if (_pending is not { } p) return;
        _pending = null;
        try
        {
            var (laneMs, endMs) = p.Lane.GetAwaiter().GetResult();
            var o = p.Observation;
            scheduler.Observe(o with { CpuLaneMs = laneMs, LayerMs = Math.Max(endMs, o.Timings!.Value.Total), Device = _deviceClock?.Read() });
        }
        finally
        {
            foreach (var t in p.Tensors) t.Dispose();
        }
    }

    /// <summary>Adds the CPU lane's results (hostY [Σn, D], in assignment order) into the output on the device.</summary>
    private void MergeCpuResults(Tensor hostY, Tensor flat, List<ExpertAssignment> cpuAssignments, Tensor output, Tensor routingWeights)
    {
        using var scope = NewDisposeScope();
        var y = merge != CpuMerge.Blocking ? ToDevice(hostY, flat) : hostY.to(flat.dtype, flat.device);                  // [Σn, D]
        long offset = 0;
        foreach (var a in cpuAssignments)
        {
            a.Accumulate(output, routingWeights, y.narrow(0, offset, a.Tokens.Length));
            offset += a.Tokens.Length;
        }
    }

    /// <summary>The gate for a gated merge on <paramref name="device"/>: a device-side wait on CUDA where the driver has one, else the host waits.</summary>
    private ICpuLaneGate GateFor(Device device)
    {
        if (_gateChosen) return _gate ??= new HostLaneGate();
        _gateChosen = true;
        if (device.type == DeviceType.CUDA)
        {
            var signal = HostSignal.TryCreate(device.index < 0 ? 0 : device.index, out string reason);
            if (signal is not null) return _gate = new CudaLaneGate(signal);
            GateFallbackReason = reason;
        }
        else GateFallbackReason = $"the {device.type} device runs ops synchronously";
        return _gate = new HostLaneGate();
    }

    /// <summary>
    /// The CPU lane's results onto the device, without blocking the host on CUDA: a blocking copy would wait for the
    /// whole device lane (streamed experts included) before the host could queue the next layer's attention; this way
    /// the host's launch work overlaps the device lane's tail. The pinned source stays valid: torch's pinned allocator
    /// does not reuse a block before the copies queued from it have run.
    /// </summary>
    private static Tensor ToDevice(Tensor hostY, Tensor like)
    {
        if (like.device.type != DeviceType.CUDA) return hostY.to(like.dtype, like.device);
        var staged = empty(hostY.shape, hostY.dtype, like.device);
        staged.copy_(hostY, true);
        return staged.to(like.dtype);
    }

    /// <summary>When the CPU lane finished (first call of <see cref="Finished"/>, from the thread that ran it), and the gate raised then.</summary>
    private sealed class LaneEnd(Stopwatch layerClock, ICpuLaneGate? gate, uint ticket)
    {
        private readonly long _start = Stopwatch.GetTimestamp();
        private int _done;

        public double LaneMs { get; private set; }
        public double EndMs { get; private set; }

        public void Finished()
        {
            if (Interlocked.Exchange(ref _done, 1) != 0) return;
            LaneMs = Stopwatch.GetElapsedTime(_start).TotalMilliseconds;
            EndMs = layerClock.Elapsed.TotalMilliseconds;
            gate?.Raise(ticket);
        }
    }

    /// <summary>A gated layer's CPU lane, still running when its layer returned, and what it needs until it ends.</summary>
    private sealed record PendingLane(Task<(double LaneMs, double EndMs)> Lane, List<Tensor> Tensors, LayerObservation Observation);
}

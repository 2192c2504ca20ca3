using Fiddler.Kernels.Runtime;
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
        if (CollectPending() is { } observation) scheduler.Observe(observation);
    }

    /// <summary>Waits for the pending lane (if any), frees its tensors and returns its observation (not yet reported).</summary>
    private LayerObservation? CollectPending()
    {
        if (_pending is not { } p) return null;
        _pending = null;
        try
        {
            var (laneMs, endMs) = Collect(p.Lane, p.Tensors.End!);
            var o = p.Observation;
            var (device, untilRouted, readback) = _deviceClock?.Read() ?? (null, null, null);
            var t = o.Timings!.Value;
            // The layer ends when both lanes have: the device lane started about when the CPU lane did (host clock).
            double deviceEnd = device is { } d ? t.DecideMs + t.CpuStartMs + d.DeviceLaneMs : 0;
            // The hand-off to the next layer, when this is called from its Run (its routing was read after the lane ended).
            long now = Stopwatch.GetTimestamp(), laneEnd = p.Tensors.End?.EndTimestamp ?? 0;
            HandoffTimings? handoff = untilRouted is { } u && laneEnd > 0 && _routingReadAt > laneEnd
                ? new HandoffTimings(u, Stopwatch.GetElapsedTime(laneEnd, _routingReadAt).TotalMilliseconds,
                    Stopwatch.GetElapsedTime(_routingReadAt, now).TotalMilliseconds, readback ?? 0)
                : null;
            return o with { CpuLaneMs = laneMs, LayerMs = Math.Max(Math.Max(endMs, t.Total), deviceEnd), Device = device, Handoff = handoff };
        }
        finally
        {
            Release(p.Tensors);
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
            try
            {
                var signal = HostSignal.TryCreate(device.index < 0 ? 0 : device.index, out string reason, spinKernelGate);
                if (signal is not null)
                {
                    var cuda = new CudaLaneGate(signal, spinKernelGate);
                    if (spinKernelGate && !cuda.SpinKernel) GateFallbackReason = $"no spin kernel: {signal.SpinKernelUnavailableReason}";
                    return _gate = cuda;
                }
                GateFallbackReason = reason;
            }
            catch (Exception e) when (e is CudaException or CudaUnavailableException or CudaDriverException)
            {
                GateFallbackReason = e.Message;
            }
        }
        else GateFallbackReason = $"the {device.type} device runs ops synchronously";
        return _gate = new HostLaneGate();
    }

    /// <summary>
    /// The CPU lane's results onto the device, without blocking the host on CUDA: a blocking copy would wait for the
    /// whole device lane (streamed experts included) before the host could queue the next layer's attention; this way
    /// the host's launch work overlaps the device lane's tail. The page-locked source (<see cref="LaneBuffers"/>) is
    /// not written again before this copy has run: the next lane starts only after the host read back the next layer's
    /// routing, which the device computes after this copy.
    /// </summary>
    private static Tensor ToDevice(Tensor hostY, Tensor like)
    {
        if (like.device.type != DeviceType.CUDA) return hostY.to(like.dtype, like.device);
        var staged = empty(hostY.Dims(), hostY.dtype, like.device);
        staged.copy_(hostY, true);
        return staged.to(like.dtype);
    }

    /// <summary>
    /// When the CPU lane finished (first call of <see cref="Finished"/>, from the thread that ran it), and the gate
    /// raised then. When the lane's task ended without the backend ever reporting (an actor call that timed out, a
    /// backend that threw before starting), <see cref="Abandon"/> raises the gate and marks the lane: its jobs may still
    /// be running, so its tensors must not be freed.
    /// </summary>
    private sealed class LaneEnd(Stopwatch layerClock, ICpuLaneGate? gate, uint ticket)
    {
        private const int Running = 0, Ended = 1, AbandonedState = 2;
        private readonly long _start = Stopwatch.GetTimestamp();
        private int _state;             // Running until the first End call sets Ended or AbandonedState
        private volatile bool _published; // the times below are written
        private readonly Lock _late = new();
        private bool _reportedLate;     // the backend reported its end after the lane had been abandoned
        private Action? _onLateEnd;

        public double LaneMs { get; private set; }
        public double EndMs { get; private set; }
        /// <summary>When the lane ended (<see cref="Stopwatch.GetTimestamp"/>), 0 before.</summary>
        public long EndTimestamp { get; private set; }

        /// <summary>Whether the lane was abandoned (its jobs may still run). Once ended, every thread sees the same answer:
        /// a losing <see cref="Abandon"/> returns only after the winner's outcome is published.</summary>
        public bool Abandoned => Volatile.Read(ref _state) == AbandonedState;

        public void Finished() => End(abandoned: false);

        public void Abandon() => End(abandoned: true);

        /// <summary>
        /// Runs <paramref name="action"/> once the backend reports the end of an abandoned lane's jobs (at once if it
        /// already has): from then on nothing writes into the lane's tensors. Never runs if the backend never reports.
        /// </summary>
        public void AfterLateEnd(Action action)
        {
            lock (_late)
            {
                if (!_reportedLate)
                {
                    _onLateEnd = action;
                    return;
                }
            }
            action();
        }

        private void End(bool abandoned)
        {
            if (Interlocked.CompareExchange(ref _state, abandoned ? AbandonedState : Ended, Running) != Running)
            {
                var wait = new SpinWait();
                while (!_published) wait.SpinOnce(); // the winner is a few instructions from publishing
                if (!abandoned && Abandoned) ReportedLate();
                return;
            }
            LaneMs = Stopwatch.GetElapsedTime(_start).TotalMilliseconds;
            EndMs = layerClock.Elapsed.TotalMilliseconds;
            EndTimestamp = Stopwatch.GetTimestamp();
            _published = true;
            gate?.Raise(ticket);
        }

        private void ReportedLate()
        {
            Action? action;
            lock (_late)
            {
                _reportedLate = true;
                action = _onLateEnd;
                _onLateEnd = null;
            }
            action?.Invoke();
        }
    }

    /// <summary>
    /// Frees a finished lane's tensors. An abandoned lane's jobs may still run: its tensors, and the reused buffers it
    /// writes (the next layer gets new ones), are freed only when the backend reports their end.
    /// </summary>
    private void Release(LaneTensors tensors)
    {
        if (tensors.End is { Abandoned: true }) tensors.AddRange(_buffers.Orphan());
        tensors.Release();
    }

    /// <summary>Tensors a CPU lane reads and writes; freed once it has ended, or once an abandoned lane's jobs end.</summary>
    private sealed class LaneTensors : List<Tensor>
    {
        private static int s_kept;

        /// <summary>Tensors of abandoned lanes whose jobs have not reported their end yet (process-wide).</summary>
        internal static int Kept => Volatile.Read(ref s_kept);

        public LaneEnd? End { get; set; }

        public void Release()
        {
            if (End is { Abandoned: true } end)
            {
                // A leak while the jobs may still write beats a write into freed memory.
                var kept = ToArray();
                Clear();
                Interlocked.Add(ref s_kept, kept.Length);
                end.AfterLateEnd(() =>
                {
                    foreach (var t in kept) t.Dispose();
                    Interlocked.Add(ref s_kept, -kept.Length);
                });
                return;
            }
            foreach (var t in this) t.Dispose();
            Clear();
        }
    }

    /// <summary>Tensors kept for abandoned CPU lanes whose jobs have not reported their end (tests, diagnostics).</summary>
    internal static int KeptLaneTensors => LaneTensors.Kept;

    /// <summary>
    /// Waits for a lane's task (the backend's own, not a continuation: that would wait for a thread-pool thread to run
    /// it, and every core is busy as a lane ends), rethrows its failure, and marks it abandoned when the backend never
    /// reported its end; then its times.
    /// </summary>
    private static (double LaneMs, double EndMs) Collect(Task lane, LaneEnd end)
    {
        try { lane.GetAwaiter().GetResult(); }
        finally { end.Abandon(); } // a no-op when the backend reported the end itself
        return (end.LaneMs, end.EndMs);
    }

    /// <summary>A gated layer's CPU lane, still running when its layer returned, and what it needs until it ends.</summary>
    private sealed record PendingLane(Task Lane, LaneTensors Tensors, LayerObservation Observation);
}

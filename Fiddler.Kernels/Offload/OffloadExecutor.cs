using System.Diagnostics;
using TorchSharp;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

// N=tokens in the layer D=hidden n=tokens of one expert

/// <summary>
/// Executes one layer's experts where the scheduler says (Fiddler's core loop): CPU experts get their activations in
/// one device→host copy and run on the CPU backend in the background, while resident experts and weight transfers
/// are queued on the compute device; then the CPU results come back in one host→device copy. Every path adds
/// weight × output with <see cref="ExpertAssignment.Accumulate"/>, so all plans compute the same function.
/// <para>
/// With <see cref="CpuMerge.Gated"/> the host does not wait for the CPU lane: the copy back and the adds are queued
/// behind a device-side wait for the lane (<see cref="ICpuLaneGate"/>), and the lane is collected at the start of the
/// next layer or by <see cref="Complete"/> (the model calls it after its last layer), which also rethrows its failure.
/// </para>
/// <para>
/// A decode layer's token rows come down to the host together with its routing (<see cref="ReadRouting"/>), so the
/// CPU lane starts right after the one read-back every layer has; <paramref name="prefetchRows"/> false copies them
/// after the routing instead (a second device round trip on the layer's serial path; kept for comparison).
/// </para>
/// <para>
/// On CUDA the gated merge's device-side wait is the driver's stream wait, or with <paramref name="spinKernelGate"/> a
/// spin kernel where one loads (see <see cref="HostSignal"/>).
/// </para>
/// </summary>
public sealed partial class OffloadExecutor(IExpertScheduler scheduler, ICpuExpertBackend cpu, IWeightStager? stager,
    CpuMerge merge = CpuMerge.Gated, ICpuLaneGate? gate = null, bool prefetchRows = true, bool spinKernelGate = false) : IExpertExecutor, IDisposable
{
    /// <summary>Most rows a layer may have for <see cref="ReadRouting"/> to copy them all down ahead of the routing
    /// (decode, a few beams); above it only the CPU experts' rows come down, after the routing.</summary>
    public const int PrefetchRowLimit = 8;

    private ICpuLaneGate? _gate = gate;
    private long _routingReadAt;
    private bool _gateChosen = gate is not null || merge != CpuMerge.Gated;
    private PendingLane? _pending;
    private readonly LaneBuffers _buffers = new();
    private DeviceLaneClock? _deviceClock;

    /// <summary>The merge asked for.</summary>
    public CpuMerge Merge => merge;

    /// <summary>Why a gated merge runs with the host waiting (no device-side wait here), or null.</summary>
    public string? GateFallbackReason { get; private set; }

    /// <summary>Who waits for CPU lanes and how, once the first gated layer chose it; null before.</summary>
    public string? GateDescription => _gate switch
    {
        CudaLaneGate { SpinKernel: true } => "device waits (spin kernel)",
        CudaLaneGate => "device waits (stream wait)" + (GateFallbackReason is { } r ? $"; {r}" : ""),
        HostLaneGate => "host waits" + (GateFallbackReason is { } r ? $": {r}" : ""),
        null => null,
        _ => _gate.DeviceWaits ? "device waits" : "host waits",
    };

    /// <summary>
    /// The routing read-back (see <see cref="IExpertExecutor.ReadRouting"/>). On CUDA, for a decode-sized layer whose block
    /// holds enough host experts that one is likely chosen (≥ 0.5 expected), the rows are queued for the host first.
    /// </summary>
    public long[] ReadRouting(MixtralSparseMoeBlock block, Tensor flat, Tensor ids)
    {
        _deviceClock?.Routed(); // before any copy: the copies are the read-back's part of the hand-off
        if (prefetchRows && merge != CpuMerge.Blocking && flat.device.type == DeviceType.CUDA && flat.size(0) <= PrefetchRowLimit
            && block.ExpectedHostExperts >= 0.5)
            _buffers.Prefetch(flat);
        var chosen = Runtime.HostReadback.Longs(ids, _deviceClock?.OnReadbackQueued);
        _routingReadAt = Stopwatch.GetTimestamp();
        return chosen;
    }

    public Tensor Run(MixtralSparseMoeBlock block, Tensor flat, Tensor routingWeights, IReadOnlyList<ExpertAssignment> assignments)
    {
        // The previous layer's lane has ended (the device computed this layer's routing after it): free its buffers now,
        // report it once this layer's CPU lane runs (nothing on the way to that start that can wait).
        var previous = CollectPending();
        using var scope = NewDisposeScope();
        var clock = Stopwatch.StartNew();
        var work = assignments.Select(a => new ExpertWork(a.Expert, a.Tokens.Length, block.IsResident(a.Expert))).ToArray();
        // Every chosen expert resident: there is nothing to decide (resident experts always run on the device), so the
        // scheduler is not asked — through the actor runtime that saves a message round trip per such layer (most layers
        // at a large budget). The observation still reaches it, marked as not decided.
        bool needsDecision = !work.All(w => w.Resident);
        var routes = needsDecision ? scheduler.Decide(block.Layer, work) : AllOnDevice(work.Length);
        Check(block.Layer, work, routes);
        double decided = clock.Elapsed.TotalMilliseconds, cpuStarted = decided;
        var laneGate = merge == CpuMerge.Gated ? GateFor(flat.device) : null;
        bool pinnedResults = merge != CpuMerge.Blocking && flat.device.type == DeviceType.CUDA;

        // Intermediate rows [0, cpuRows) of each expert on the CPU, [cpuRows, I) on the device (a split has both).
        int intermediate = (int)block.Expert(assignments.Count > 0 ? assignments[0].Expert : 0).Gate.Weight.size(0);
        var cpuRows = routes.Select(r => r.CpuRows(intermediate)).ToArray();

        // CPU lane first, so it runs while the device lane is being queued.
        var cpuIndices = Enumerable.Range(0, assignments.Count).Where(i => routes[i].UsesCpu && cpuRows[i] > 0).ToList();
        var cpuAssignments = cpuIndices.Select(i => assignments[i]).ToList();
        Task? cpuLane = null; // the backend's task: ends with the lane (its failure included)
        Tensor? hostY = null;
        // What the lane reads and writes lives outside this scope: with a gated merge the lane outlives this call.
        var laneTensors = new LaneTensors();
        uint ticket = 0;
        int cpuTokens = cpuAssignments.Sum(a => a.Tokens.Length);
        if (cpuTokens > 0)
        {
            // The lane's rows in one device→host copy; on CUDA into reused page-locked buffers, so the results can go
            // back with a non-blocking copy (see the merge below). When every CPU expert takes every row in order (a
            // decode token), its experts share one copy of the input; each writes its own output rows.
            long n = flat.size(0);
            bool shared = cpuAssignments.All(a => ExpertAssignment.IsEveryRowInOrder(a.Tokens, n));
            long[] rows = shared ? [.. Enumerable.Range(0, (int)n).Select(i => (long)i)] : cpuAssignments.SelectMany(a => a.Tokens).ToArray();
            var (hostX, y0) = _buffers.Take(flat, rows, pinnedResults, cpuTokens); // [n or Σn, D], [Σn, D]
            hostY = y0;
            laneTensors.AddRange([hostX, hostY]);
            var jobs = new List<CpuExpertJob>();
            long offset = 0;
            foreach (int i in cpuIndices)
            {
                var a = assignments[i];
                var x = shared ? hostX : hostX.narrow(0, offset, a.Tokens.Length);
                var y = cpuIndices.Count == 1 ? hostY : hostY.narrow(0, offset, a.Tokens.Length);
                if (!shared) laneTensors.Add(x);
                if (cpuIndices.Count > 1) laneTensors.Add(y);
                jobs.Add(new CpuExpertJob(block.Expert(a.Expert), x, y, cpuRows[i] < intermediate ? cpuRows[i] : null));
                offset += a.Tokens.Length;
            }
            foreach (var t in laneTensors) t.DetachFromDisposeScope();
            ticket = laneGate?.Arm() ?? 0;
            cpuStarted = clock.Elapsed.TotalMilliseconds;
            var lane = laneTensors.End = new LaneEnd(clock, laneGate, ticket);
            try { cpuLane = cpu.Start(jobs, lane.Finished); }
            catch (Exception e) { cpuLane = Task.FromException(e); }
            // The gate is raised by the backend's callback, or here when the backend never reported (the device must
            // never wait forever, even before the host collects the lane); the failure is rethrown when it is collected.
            cpuLane.ContinueWith(_ => lane.Abandon(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        long bytesBefore = stager?.BytesCopied ?? 0;
        var staged = new Queue<(ExpertAssignment A, StagedWeights W)>();
        double queued;
        Tensor output;
        try
        {
            // From here on a CPU lane may be running: any failure must wait for it before its tensors go (catch below).
            if (previous is not null) scheduler.Observe(previous);
            output = zeros_like(flat); // [N, D]: every path adds into it
            var deviceClock = laneGate is { DeviceWaits: true } && cpuLane is not null && flat.device.type == DeviceType.CUDA ? _deviceClock ??= new DeviceLaneClock(flat.device) : null;
            deviceClock?.Begin();
            // Device lane: start the first weight copies, queue resident experts (they overlap the copies), then each
            // transferred expert as its weights land, refilling its slot with the next pending copy.
            // A split expert's part is copied last, as the router's timeline assumes (whole experts' copies go first).
            var transfers = new Queue<(ExpertAssignment A, int Start)>(Enumerable.Range(0, assignments.Count)
                .Where(i => routes[i].UsesTransfer && cpuRows[i] < intermediate)
                .OrderBy(i => routes[i].Kind == ExpertRouteKind.Split ? 1 : 0).Select(i => (assignments[i], cpuRows[i])));
            for (int slot = 0; stager is not null && slot < stager.Slots && transfers.Count > 0; slot++)
                staged.Enqueue(Begin(block, slot, transfers.Dequeue()));
            for (int i = 0; i < assignments.Count; i++)
                if (routes[i].Kind == ExpertRouteKind.Gpu)
                    assignments[i].Accumulate(output, routingWeights, block.Expert(assignments[i].Expert).forward(assignments[i].Gather(flat)));
            while (staged.Count > 0)
            {
                var (a, w) = staged.Peek();
                stager!.Await(w);
                a.Accumulate(output, routingWeights, MixtralBlockSparseTop2MLP.Compute(a.Gather(flat), w.W1, w.W3, w.W2));
                staged.Dequeue();
                stager.Release(w.Slot);
                if (transfers.Count > 0) staged.Enqueue(Begin(block, w.Slot, transfers.Dequeue()));
            }
            queued = clock.Elapsed.TotalMilliseconds;
            if (cpuLane is not null && laneGate is not null)
            {
                // Device work from here on waits for the lane; the host goes on to the next layer.
                deviceClock?.Ready();
                laneGate.Hold(ticket);
                deviceClock?.Released();
                double held = clock.Elapsed.TotalMilliseconds;
                MergeCpuResults(hostY!, flat, cpuAssignments, output, routingWeights);
                _pending = new PendingLane(cpuLane, laneTensors, new LayerObservation(block.Layer, work, routes, 0, 0, cpuTokens,
                    (stager?.BytesCopied ?? 0) - bytesBefore)
                {
                    Decided = needsDecision,
                    Timings = new ExecutorTimings(decided, cpuStarted - decided, queued - cpuStarted, held - queued, clock.Elapsed.TotalMilliseconds - held),
                });
                return output.MoveToOuterDisposeScope();
            }
        }
        catch
        {
            // Give back every slot still held, or one failed layer (e.g. out of memory) would leave the stager refusing
            // every later transfer; the free point is after whatever the device already queued on them.
            // Any failure to give one back (a CudaException after a sticky device error, say) must not skip the rest of
            // this cleanup: the CPU lane below may still be writing its buffers.
            foreach (var (_, w) in staged)
                try { stager!.Release(w.Slot); } catch (Exception) { }
            // The CPU lane reads and writes its tensors: let it finish before freeing them.
            try { cpuLane?.Wait(); } catch (AggregateException) { }
            laneTensors.End?.Abandon(); // a backend that ended without reporting may still run its jobs: keep their tensors
            Release(laneTensors);
            throw;
        }

        double waited = queued, cpuMs = 0;
        if (cpuLane is not null)
        {
            try
            {
                cpuMs = Collect(cpuLane, laneTensors.End!).LaneMs;
                waited = clock.Elapsed.TotalMilliseconds;
                MergeCpuResults(hostY!, flat, cpuAssignments, output, routingWeights);
            }
            finally
            {
                Release(laneTensors);
            }
        }
        double end = clock.Elapsed.TotalMilliseconds;
        scheduler.Observe(new LayerObservation(block.Layer, work, routes, cpuMs, end, cpuTokens, (stager?.BytesCopied ?? 0) - bytesBefore)
        {
            Decided = needsDecision,
            Timings = new ExecutorTimings(decided, cpuStarted - decided, queued - cpuStarted, waited - queued, end - waited),
        });
        return output.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        try { Complete(); } catch (Exception) { /* the failure was the layer's, reported to its caller or lost with it */ }
        _gate?.Dispose(); // a CUDA gate first lets its device drain the waits queued on it
        _gate = null;
        _buffers.Dispose();
        _deviceClock?.Dispose();
        _deviceClock = null;
    }

    private (ExpertAssignment, StagedWeights) Begin(MixtralSparseMoeBlock block, int slot, (ExpertAssignment A, int Start) t)
    {
        var e = block.Expert(t.A.Expert);
        long intermediate = e.Gate.Weight.size(0);
        return (t.A, t.Start == 0 ? stager!.Begin(slot, e.Gate.Weight, e.Up.Weight, e.Down.Weight)
            : stager!.Begin(slot, e.Gate.Weight, e.Up.Weight, e.Down.Weight, t.Start, (int)(intermediate - t.Start)));
    }

    private static ExpertRoute[] AllOnDevice(int count)
    {
        var routes = new ExpertRoute[count];
        Array.Fill(routes, ExpertRoute.Gpu);
        return routes;
    }

    private void Check(int layer, ExpertWork[] work, IReadOnlyList<ExpertRoute> routes)
    {
        if (routes.Count != work.Length)
            throw new InvalidOperationException($"layer {layer}: scheduler returned {routes.Count} routes for {work.Length} experts");
        for (int i = 0; i < work.Length; i++)
        {
            if (work[i].Resident != (routes[i].Kind == ExpertRouteKind.Gpu))
                throw new InvalidOperationException($"layer {layer} expert {work[i].Expert}: route {routes[i]} for a " +
                    (work[i].Resident ? "resident" : "host-resident") + " expert");
            if (routes[i].UsesTransfer && stager is null)
                throw new InvalidOperationException($"layer {layer}: transfer requested but no weight stager is configured");
        }
    }
}

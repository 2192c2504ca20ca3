using System.Diagnostics;
using TorchSharp;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

// N=tokens in the layer D=hidden n=tokens of one expert

/// <summary>
/// Executes one layer's experts where the scheduler says (Fiddler's core loop): CPU experts get their activations in
/// one device→host copy and run on the CPU backend in the background, while resident experts and weight transfers
/// are queued on the compute device; then the CPU results come back in one host→device copy. Every path adds
/// weight × output with <see cref="ExpertAssignment.Accumulate"/>, so all plans compute the same function.
/// </summary>
/// <param name="asyncMerge">On CUDA, return the CPU lane's results with a non-blocking copy from pinned memory.</param>
public sealed class OffloadExecutor(IExpertScheduler scheduler, ICpuExpertBackend cpu, IWeightStager? stager, bool asyncMerge = true) : IExpertExecutor
{
    public void Run(MixtralSparseMoeBlock block, Tensor flat, Tensor routingWeights, IReadOnlyList<ExpertAssignment> assignments, Tensor output)
    {
        using var scope = NewDisposeScope();
        var clock = Stopwatch.StartNew();
        var work = assignments.Select(a => new ExpertWork(a.Expert, a.Tokens.Length, block.IsResident(a.Expert))).ToArray();
        var routes = scheduler.Decide(block.Layer, work);
        Check(block.Layer, work, routes);
        double decided = clock.Elapsed.TotalMilliseconds, cpuStarted = decided;

        // Intermediate rows [0, cpuRows) of each expert on the CPU, [cpuRows, I) on the device (a split has both).
        int intermediate = (int)block.Expert(assignments.Count > 0 ? assignments[0].Expert : 0).Gate.Weight.shape[0];
        var cpuRows = routes.Select(r => r.CpuRows(intermediate)).ToArray();

        // CPU lane first, so it runs while the device lane is being queued.
        var cpuIndices = Enumerable.Range(0, assignments.Count).Where(i => routes[i].UsesCpu && cpuRows[i] > 0).ToList();
        var cpuAssignments = cpuIndices.Select(i => assignments[i]).ToList();
        Task<double>? cpuLane = null;
        Tensor? hostY = null;
        int cpuTokens = cpuAssignments.Sum(a => a.Tokens.Length);
        if (cpuTokens > 0)
        {
            // Copy all N rows once and gather on the host: one device→host copy, and no host→device index copy
            // (a synchronous one) on the decode path, where N is 1 (or the beam width).
            var rows = tensor(cpuAssignments.SelectMany(a => a.Tokens).ToArray());
            var hostX = flat.to(ScalarType.Float32, CPU).index_select(0, rows);               // [Σn, D]
            // Page-locked on CUDA, so the results can go back with a non-blocking copy (see the merge below).
            hostY = asyncMerge && flat.device.type == DeviceType.CUDA ? empty_like(hostX).pin_memory() : empty_like(hostX);
            var jobs = new List<CpuExpertJob>();
            long offset = 0;
            foreach (int i in cpuIndices)
            {
                var a = assignments[i];
                jobs.Add(new CpuExpertJob(block.Expert(a.Expert), hostX.narrow(0, offset, a.Tokens.Length), hostY.narrow(0, offset, a.Tokens.Length),
                    cpuRows[i] < intermediate ? cpuRows[i] : null));
                offset += a.Tokens.Length;
            }
            cpuStarted = clock.Elapsed.TotalMilliseconds;
            cpuLane = Task.Run(() =>
            {
                var lane = Stopwatch.StartNew();
                cpu.Run(jobs);
                return lane.Elapsed.TotalMilliseconds;
            });
        }

        long bytesBefore = stager?.BytesCopied ?? 0;
        var staged = new Queue<(ExpertAssignment A, StagedWeights W)>();
        try
        {
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
        }
        catch
        {
            // Give back every slot still held, or one failed layer (e.g. out of memory) would leave the stager refusing
            // every later transfer; the free point is after whatever the device already queued on them.
            foreach (var (_, w) in staged)
                try { stager!.Release(w.Slot); } catch (InvalidOperationException) { }
            // The CPU lane reads hostX and writes hostY, which this scope frees: let it finish before unwinding.
            try { cpuLane?.Wait(); } catch (AggregateException) { }
            throw;
        }

        double queued = clock.Elapsed.TotalMilliseconds, waited = queued;
        double cpuMs = 0;
        if (cpuLane is not null)
        {
            cpuMs = cpuLane.GetAwaiter().GetResult();
            waited = clock.Elapsed.TotalMilliseconds;
            var y = asyncMerge ? ToDevice(hostY!, flat) : hostY!.to(flat.dtype, flat.device);                                                    // [Σn, D]
            long offset = 0;
            foreach (var a in cpuAssignments)
            {
                a.Accumulate(output, routingWeights, y.narrow(0, offset, a.Tokens.Length));
                offset += a.Tokens.Length;
            }
        }
        double end = clock.Elapsed.TotalMilliseconds;
        scheduler.Observe(new LayerObservation(block.Layer, work, routes, cpuMs, end, cpuTokens, (stager?.BytesCopied ?? 0) - bytesBefore)
        {
            Timings = new ExecutorTimings(decided, cpuStarted - decided, queued - cpuStarted, waited - queued, end - waited),
        });
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

    private (ExpertAssignment, StagedWeights) Begin(MixtralSparseMoeBlock block, int slot, (ExpertAssignment A, int Start) t)
    {
        var e = block.Expert(t.A.Expert);
        long intermediate = e.Gate.Weight.shape[0];
        return (t.A, t.Start == 0 ? stager!.Begin(slot, e.Gate.Weight, e.Up.Weight, e.Down.Weight)
            : stager!.Begin(slot, e.Gate.Weight, e.Up.Weight, e.Down.Weight, t.Start, (int)(intermediate - t.Start)));
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

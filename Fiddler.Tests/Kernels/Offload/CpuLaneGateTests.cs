using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

public sealed class CpuLaneGateTests
{
    [Fact]
    public async Task HostLaneGate_HoldBlocksUntilItsTicketIsRaised()
    {
        var gate = new HostLaneGate();
        uint first = gate.Arm(), second = gate.Arm();
        var holding = Task.Run(() => gate.Hold(second));
        gate.Raise(first);
        Assert.NotSame(holding, await Task.WhenAny(holding, Task.Delay(100))); // an older ticket must not release a newer one
        gate.Raise(second);
        await holding.WaitAsync(TimeSpan.FromSeconds(5));
        gate.Hold(first); // already passed: returns at once
        gate.Raise(first); // late raise of an older ticket must not move the gate back
        gate.Hold(second);
    }

    /// <summary>A gate that, like CUDA's, never blocks the host in Hold (so a test can see that the host went on);
    /// with <paramref name="hostWaits"/> its Hold does wait for the raise, so the merged results are the lane's.</summary>
    private sealed class RecordingGate(bool hostWaits = false) : ICpuLaneGate
    {
        public readonly List<string> Events = [];
        private readonly HostLaneGate _inner = new();
        private uint _next;
        public bool DeviceWaits => true;
        public uint Arm() { lock (Events) Events.Add($"arm {++_next}"); return _inner.Arm(); }
        public void Raise(uint ticket) { lock (Events) Events.Add($"raise {ticket}"); _inner.Raise(ticket); }
        public void Hold(uint ticket)
        {
            lock (Events) Events.Add($"hold {ticket}");
            if (hostWaits) _inner.Hold(ticket);
        }
        public void Dispose() { }
    }

    /// <summary>Runs jobs only once the test opens it; can fail instead.</summary>
    private sealed class LatchedBackend(bool fail) : ICpuExpertBackend
    {
        public readonly ManualResetEventSlim Open = new();
        public volatile bool Finished;
        public string Name => "latched";
        public void Run(IReadOnlyList<CpuExpertJob> jobs)
        {
            Open.Wait(TimeSpan.FromSeconds(30));
            Finished = true;
            if (fail) throw new InvalidOperationException("CPU lane failed on purpose");
            new TorchCpuBackend().Run(jobs);
        }
    }

    /// <summary>The block's output with every expert on libtorch's CPU path, merged as the lane ends (no gate).</summary>
    private static Tensor ReferenceOutput(Fiddler.Kernels.Modules.MixtralSparseMoeBlock block, Tensor x)
    {
        var executor = block.Executor;
        using var blocking = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), new TorchCpuBackend(), null, CpuMerge.Blocking);
        block.Executor = blocking;
        try { return block.forward(x); }
        finally { block.Executor = executor; }
    }

    private static (IDisposable Owner, Fiddler.Kernels.Modules.MixtralSparseMoeBlock Block, long Hidden) HostExpertLayer()
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32,
            ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
        return (loaded, loaded.Model.Model.Layers[0].Moe, config.HiddenSize);
    }

    [Fact]
    public void GatedMerge_LayerReturnsBeforeTheCpuLane_AndCompleteCollectsIt()
    {
        var (owner, block, hidden) = HostExpertLayer();
        using var _ = owner;
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        var backend = new LatchedBackend(fail: false);
        var gate = new RecordingGate();
        using var executor = new OffloadExecutor(scheduler, backend, null, CpuMerge.Gated, gate);
        block.Executor = executor;
        using var x = randn(1, 3, hidden);

        using (block.forward(x)) { }
        Assert.False(backend.Finished, "the layer waited for its CPU lane");
        Assert.Empty(scheduler.Observed);
        Assert.Equal(["arm 1", "hold 1"], gate.Events);

        Thread.Sleep(100);
        backend.Open.Set();
        executor.Complete();
        Assert.Equal(["arm 1", "hold 1", "raise 1"], gate.Events);
        var o = Assert.Single(scheduler.Observed);
        Assert.Equal(3 * 3, o.CpuTokens); // 3 tokens × top-3, every expert on the CPU
        // The lane was held open ≥ 100 ms below (the test's delay before opening it): both times must show it.
        Assert.True(o.CpuLaneMs >= 90 && o.LayerMs >= o.CpuLaneMs, $"lane {o.CpuLaneMs} ms, layer {o.LayerMs} ms");
        executor.Complete(); // nothing left: a no-op
        Assert.Single(scheduler.Observed);
    }

    [Fact]
    public void GatedMerge_CpuLaneFails_TheGateIsRaisedAndCompleteThrows()
    {
        var (owner, block, hidden) = HostExpertLayer();
        using var _ = owner;
        var backend = new LatchedBackend(fail: true);
        var gate = new RecordingGate();
        using var executor = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), backend, null, CpuMerge.Gated, gate);
        block.Executor = executor;
        using var x = randn(1, 2, hidden);

        using (block.forward(x)) { }
        backend.Open.Set();
        var e = Assert.Throws<InvalidOperationException>(executor.Complete);
        Assert.Contains("on purpose", e.Message);
        Assert.Contains("raise 1", gate.Events); // the device is never left waiting
    }

    /// <summary>Gives up on its jobs at once (as an actor call that timed out) while they go on writing a while later.</summary>
    private sealed class AbandoningBackend : ICpuExpertBackend
    {
        public Task? StrayWrites;
        public string Name => "abandoning";
        public void Run(IReadOnlyList<CpuExpertJob> jobs) => throw new NotSupportedException();
        public Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished)
        {
            if (StrayWrites is not null) // only the first lane is given up on; later ones run normally
                return Task.Run(() =>
                {
                    try { new TorchCpuBackend().Run(jobs); }
                    finally { finished(); }
                });
            StrayWrites = Task.Run(async () =>
            {
                await Task.Delay(200);
                try
                {
                    foreach (var j in jobs) j.Y.fill_(1); // throws if the executor freed the lane's tensors
                }
                finally { finished(); } // the jobs' end, reported late: only now may the lane's tensors go
            });
            return Task.FromException(new TimeoutException("the CPU pool did not answer on purpose"));
        }
    }

    [Fact]
    public async Task GatedMerge_LaneAbandonedWhileItsJobsRun_TensorsOutliveThemAndTheFailureSurfaces()
    {
        var (owner, block, hidden) = HostExpertLayer();
        using var _ = owner;
        var backend = new AbandoningBackend();
        var gate = new RecordingGate(hostWaits: true);
        using var executor = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), backend, null, CpuMerge.Gated, gate);
        block.Executor = executor;
        using var x = randn(1, 2, hidden);

        using (block.forward(x)) { }
        Assert.Contains("on purpose", Assert.Throws<TimeoutException>(executor.Complete).Message);
        Assert.Contains("raise 1", gate.Events); // the device is released although the backend never reported
        Assert.True(OffloadExecutor.KeptLaneTensors > 0, "the abandoned lane's tensors were not kept");
        await backend.StrayWrites!.WaitAsync(TimeSpan.FromSeconds(10)); // the late writes found live tensors
        // Once the jobs reported their end, the kept tensors (the reused page-locked buffers included) are freed.
        Assert.Equal(0, OffloadExecutor.KeptLaneTensors);

        // The executor goes on with new buffers: the next lane, which the backend runs, gives the right answer.
        using var expected = ReferenceOutput(block, x);
        using (var y = block.forward(x))
        {
            executor.Complete();
            Assert.True(allclose(y, expected, rtol: 1e-5, atol: 1e-6), "the layer after an abandoned lane is wrong");
        }
    }

    [Fact]
    public void GatedMerge_NextLayerCollectsThePreviousLane()
    {
        var (owner, block, hidden) = HostExpertLayer();
        using var _ = owner;
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        var backend = new LatchedBackend(fail: false);
        backend.Open.Set();
        using var executor = new OffloadExecutor(scheduler, backend, null, CpuMerge.Gated, new RecordingGate());
        block.Executor = executor;
        using var x = randn(1, 1, hidden);
        using (block.forward(x)) { }
        using (block.forward(x)) { }
        Assert.Single(scheduler.Observed); // the first layer's, collected when the second began
        executor.Complete();
        Assert.Equal(2, scheduler.Observed.Count);
    }

    /// <summary>A stager whose copies fail and whose slots cannot be given back (as after a sticky CUDA error).</summary>
    private sealed class FaultedStager(IWeightStager inner) : IWeightStager
    {
        public int Slots => inner.Slots;
        public long BytesCopied => inner.BytesCopied;
        public StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2, int start = 0, int? rows = null) => inner.Begin(slot, w1, w3, w2, start, rows);
        public void Await(StagedWeights staged) => throw new InvalidOperationException("device failure on purpose");
        public void Release(int slot) => throw new Fiddler.Kernels.Cuda.CudaException("cudaEventRecord", Fiddler.Kernels.Cuda.CudaErrors.IllegalAddress);
        public void Dispose() => inner.Dispose();
    }

    /// <summary>Runs its jobs for a while on the thread pool, saying when they run.</summary>
    private sealed class SlowBackend : ICpuExpertBackend
    {
        public volatile bool Running;
        public string Name => "slow";
        public void Run(IReadOnlyList<CpuExpertJob> jobs)
        {
            Thread.Sleep(500);
            new TorchCpuBackend().Run(jobs);
        }
        public Task Start(IReadOnlyList<CpuExpertJob> jobs, Action finished)
        {
            Running = true;
            return Task.Run(() =>
            {
                try { Run(jobs); }
                finally { Running = false; finished(); }
            });
        }
    }

    [Fact]
    public void FailedLayer_SlotsThatCannotBeGivenBack_StillWaitsForItsCpuLane()
    {
        // A CudaException from giving back a slot escaped the layer's cleanup: the layer threw while its CPU lane was
        // still writing the reused page-locked buffers.
        var (owner, block, hidden) = HostExpertLayer();
        using var _ = owner;
        using var stager = new FaultedStager(new CopyStager(2, hidden, 40, ScalarType.Float32, CPU));
        var backend = new SlowBackend();
        using var executor = new OffloadExecutor(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Split(0.5)), backend, stager, CpuMerge.Blocking);
        block.Executor = executor;
        using var x = randn(1, 2, hidden);
        Assert.ThrowsAny<Exception>(() => block.forward(x));
        Assert.False(backend.Running, "the layer threw while its CPU lane was still running");
    }
}

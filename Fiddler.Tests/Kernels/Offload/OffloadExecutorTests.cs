using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

public sealed class OffloadExecutorTests
{
    /// <summary>Staging with the CUDA stager's slot rule (Begin into a slot not yet released throws); Await can fail once.</summary>
    private sealed class StrictStager(IWeightStager inner) : IWeightStager
    {
        private readonly bool[] _inUse = new bool[inner.Slots];
        public int FailAwaits;
        public int Slots => inner.Slots;
        public long BytesCopied => inner.BytesCopied;
        public bool AnyInUse => _inUse.Any(x => x);

        public StagedWeights Begin(int slot, Tensor w1, Tensor w3, Tensor w2, int start = 0, int? rows = null)
        {
            if (_inUse[slot]) throw new InvalidOperationException($"slot {slot} is still in use");
            _inUse[slot] = true;
            return inner.Begin(slot, w1, w3, w2, start, rows);
        }

        public void Await(StagedWeights staged)
        {
            if (FailAwaits > 0) { FailAwaits--; throw new InvalidOperationException("device failure on purpose"); }
            inner.Await(staged);
        }

        public void Release(int slot)
        {
            if (!_inUse[slot]) throw new InvalidOperationException($"slot {slot} is not in use");
            _inUse[slot] = false;
        }

        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void Run_DeviceLaneFails_SlotsAreReleasedAndTheNextGenerationWorks()
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json"));
        using var loaded = ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32,
            ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
        using var stager = new StrictStager(new CopyStager(2, config.HiddenSize, config.IntermediateSize, ScalarType.Float32, CPU)) { FailAwaits = 1 };
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Transfer);
        loaded.Model.SetExpertExecutor(new OffloadExecutor(scheduler, new TorchCpuBackend(), stager));
        var options = new GenerationOptions { MaxNewTokens = 3, Sampling = SamplingOptions.Greedy, StopOnEos = false };

        var e = Assert.Throws<InvalidOperationException>(() => new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run([1, 2, 3, 4], options));
        Assert.Contains("on purpose", e.Message);
        Assert.False(stager.AnyInUse, "a failed layer left staging slots in use");
        Assert.Equal(3, new Fiddler.Kernels.Generation.Generator(loaded.Model, null).Run([1, 2, 3, 4], options).Tokens.Length);
    }

    [Theory]
    [InlineData(0.975, 1024, 960)]   // would round to all 1024 rows: one block stays on the transfer side
    [InlineData(0.02, 1024, 64)]     // would round to 0 rows: one block stays on the CPU
    [InlineData(0.5, 14336, 7168)]   // Mixtral: whole 64-row blocks
    [InlineData(0.3, 48, 14)]        // small experts split by row
    [InlineData(0.99, 48, 47)]
    [InlineData(0.5, 1, 1)]          // one row cannot be divided
    public void SplitRoute_CpuRows_WholeBlocksWithWorkOnBothLanes(double share, int intermediate, int expected)
        => Assert.Equal(expected, ExpertRoute.Split(share).CpuRows(intermediate));
}

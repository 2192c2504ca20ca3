using Xunit;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Offload;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Offload;

public class CpuBackendTests
{
    private sealed class Recording(string name, List<string> log) : ICpuExpertBackend
    {
        public string Name => name;
        public void Run(IReadOnlyList<CpuExpertJob> jobs) => log.Add($"{name}:{string.Join(",", jobs.Select(j => j.X.shape[0]))}");
    }

    [Fact]
    public void SplitBackend_RunsLargeBatchesFirst_ThenSmall_EachJobOnce()
    {
        using var scope = NewDisposeScope();
        var c = MixtralConfig.Mixtral8x7B with { HiddenSize = 8, IntermediateSize = 16, NumAttentionHeads = 2, NumKeyValueHeadsRaw = 1 };
        using var expert = new MixtralBlockSparseTop2MLP(c, ScalarType.Float32, CPU);
        CpuExpertJob Job(int tokens) => new(expert, zeros(tokens, 8), zeros(tokens, 8));
        var log = new List<string>();
        var split = new SplitCpuBackend(new Recording("small", log), new Recording("large", log), tokens => tokens >= 16);
        split.Run([Job(1), Job(64), Job(4), Job(16)]);
        Assert.Equal(["large:64,16", "small:1,4"], log);
    }

    [Fact]
    public void TorchBackend_WithThreads_SetsTheRunningThreadsIntraOpCount()
    {
        int seen = 0, before = 0, wanted = 0;
        var thread = new Thread(() =>
        {
            before = get_num_threads();
            wanted = before == 1 ? 2 : 1; // a count other than the current one, so the test can fail
            try
            {
                new TorchCpuBackend(wanted).Run([]);
                seen = get_num_threads();
            }
            finally { set_num_threads(before); }
        });
        thread.Start();
        thread.Join();
        Assert.Equal(wanted, seen);
        Assert.Throws<ArgumentOutOfRangeException>(() => new TorchCpuBackend(-1));
    }

    [Fact]
    public void SimdBackend_InputsTheKernelCannotReadSafely_AreRefusedNotComputed()
    {
        using var scope = NewDisposeScope();
        var c = MixtralConfig.Mixtral8x7B with { HiddenSize = 8, IntermediateSize = 16, NumAttentionHeads = 2, NumKeyValueHeadsRaw = 1 };
        using var expert = new MixtralBlockSparseTop2MLP(c, ScalarType.Float32, CPU, pinned: false, fused: false);
        foreach (var p in expert.parameters()) { using var noGrad = no_grad(); p.normal_(); }
        using var pool = new Fiddler.Kernels.Experts.CpuWorkerPool(2);
        var backend = new SimdCpuBackend(pool);
        var x = randn(3, 8);
        var ok = zeros(3, 8);
        backend.Run([new CpuExpertJob(expert, x, ok)]);
        var expected = expert.forward(x);
        Assert.True(allclose(ok, expected, rtol: 1e-4, atol: 1e-5));

        // Strided X (a transpose), the wrong dtype, the wrong width, too few output rows, a strided Y: each refused.
        var bad = new (Tensor X, Tensor Y, string Says)[]
        {
            (randn(8, 3).t(), zeros(3, 8), "strided"),
            (x.to(ScalarType.BFloat16), zeros(3, 8), "X must be"),
            (randn(3, 7), zeros(3, 7), "X must be"),
            (x, zeros(2, 8), "Y must be"),
            (x, zeros(8, 3).t(), "Y must be"),
        };
        foreach (var (bx, by, says) in bad)
            Assert.Contains(says, Assert.Throws<ArgumentException>(() => backend.Run([new CpuExpertJob(expert, bx, by)])).Message);
    }
}

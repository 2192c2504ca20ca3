using Xunit;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Experts;

public sealed unsafe class CpuKernelTuningTests
{
    [Fact]
    public void Setters_CheckTheirRanges()
    {
        Assert.Equal(1024, CpuKernelTuning.DefaultPrefetchBytes);
        Assert.Equal(128 * 1024, CpuKernelTuning.DefaultItemBytes);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = 100);   // not a multiple of 64
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = -64);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = 16384 + 64);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.ItemBytes = 8 * 1024);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.ItemBytes = 8 << 20);
    }

    [Fact]
    public void SwiGlu_AnyTuning_GivesBitIdenticalResults()
    {
        // The tuning moves rows between work items and prefetches; each output is still summed in the same order.
        using var pool = new CpuWorkerPool(threads: 3);
        using var scope = NewDisposeScope();
        const int hidden = 1024, intermediate = 2048, tokens = 3; // 4 KB gate rows: a 16 KB item holds 4 of them
        var x = randn(tokens, hidden);
        var (w1, w3, w2) = (randn(intermediate, hidden).to(ScalarType.BFloat16), randn(intermediate, hidden).to(ScalarType.BFloat16),
            randn(hidden, intermediate).to(ScalarType.BFloat16));
        var weights = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(w3), (void*)TensorMemory.DataPtr(w2),
            hidden, intermediate, WeightType.BF16);
        Tensor Run()
        {
            var y = empty(tokens, hidden);
            CpuExpertKernel.SwiGlu(pool, (float*)TensorMemory.DataPtr(x), tokens, weights, (float*)TensorMemory.DataPtr(y));
            return y;
        }
        var saved = (CpuKernelTuning.PrefetchBytes, CpuKernelTuning.ItemBytes);
        try
        {
            var reference = Run();
            foreach (var (prefetch, item) in new[] { (0, 16 * 1024), (4096, 1 << 20), (64, 48 * 1024) })
            {
                CpuKernelTuning.PrefetchBytes = prefetch;
                CpuKernelTuning.ItemBytes = item;
                Assert.True((Run() == reference).all().item<bool>(), $"prefetch {prefetch}, item {item}");
            }
        }
        finally
        {
            (CpuKernelTuning.PrefetchBytes, CpuKernelTuning.ItemBytes) = saved;
        }
    }

    [Fact]
    public void Stats_CountRegionsAndTheWeightBytesTheyRead()
    {
        using var pool = new CpuWorkerPool(threads: 2);
        using var scope = NewDisposeScope();
        const int hidden = 128, intermediate = 256;
        var (w1, w3, w2) = (randn(intermediate, hidden).to(ScalarType.BFloat16), randn(intermediate, hidden).to(ScalarType.BFloat16),
            randn(hidden, intermediate).to(ScalarType.BFloat16));
        var x = randn(2, hidden);
        var (y, y2) = (empty(2, hidden), empty(2, hidden));
        var whole = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(w3), (void*)TensorMemory.DataPtr(w2), hidden, intermediate, WeightType.BF16);
        var slice = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(w3), (void*)TensorMemory.DataPtr(w2), hidden, 64, WeightType.BF16, w2Stride: intermediate);
        float* xp = (float*)TensorMemory.DataPtr(x), yp = (float*)TensorMemory.DataPtr(y), yp2 = (float*)TensorMemory.DataPtr(y2);
        // Counters are process-wide and other tests run kernels too: compare before and after under one lock-free read each.
        var before = CpuExpertKernel.Stats;
        CpuExpertKernel.SwiGluMany(pool, [new ExpertJob(whole, xp, yp, 2), new ExpertJob(slice, xp, yp2, 2)]);
        var after = CpuExpertKernel.Stats;
        Assert.True(after.Regions - before.Regions >= 1);
        Assert.True(after.WeightBytes - before.WeightBytes >= 3L * hidden * (intermediate + 64) * 2);
        Assert.True(after.Ms > before.Ms);
    }

    [Fact]
    public void CheckEnvironment_AVariableOutOfRange_NamesIt()
    {
        string? before = Environment.GetEnvironmentVariable("FIDDLER_KERNEL_ITEM_KB");
        try
        {
            Environment.SetEnvironmentVariable("FIDDLER_KERNEL_ITEM_KB", "2");
            var e = Assert.Throws<ArgumentException>(CpuKernelTuning.CheckEnvironment);
            Assert.Contains("FIDDLER_KERNEL_ITEM_KB=2", e.Message);
            Environment.SetEnvironmentVariable("FIDDLER_KERNEL_ITEM_KB", "lots");
            Assert.Throws<ArgumentException>(CpuKernelTuning.CheckEnvironment);
            Environment.SetEnvironmentVariable("FIDDLER_KERNEL_ITEM_KB", "256");
            CpuKernelTuning.CheckEnvironment();
        }
        finally
        {
            Environment.SetEnvironmentVariable("FIDDLER_KERNEL_ITEM_KB", before);
        }
    }
}

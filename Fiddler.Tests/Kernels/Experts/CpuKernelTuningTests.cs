using Xunit;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Experts;

// The environment tests set FIDDLER_KERNEL_* variables that the CLI checks at start: run apart from the in-process CLI tests.
[Collection(Fiddler.Tests.Host.ConsoleCollection.Name)]
public sealed unsafe class CpuKernelTuningTests
{
    [Fact]
    public void Setters_CheckTheirRanges()
    {
        Assert.Equal(1024, CpuKernelTuning.DefaultPrefetchBytes);
        Assert.Equal(512 * 1024, CpuKernelTuning.DefaultItemBytes);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = 100);   // not a multiple of 64
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = -64);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchBytes = 16384 + 64);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.ItemBytes = 8 * 1024);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.ItemBytes = 8 << 20);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.PrefetchLevel = (PrefetchLevel)7);
        Assert.Equal(PrefetchLevel.L1, CpuKernelTuning.DefaultPrefetchLevel);
        Assert.False(CpuKernelTuning.DefaultNextRowsPrefetch);
        Assert.True(CpuKernelTuning.DefaultSpreadRows);
        Assert.Equal(0, CpuKernelTuning.DefaultTailItemBytes);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.TailItemBytes = 8 * 1024);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuKernelTuning.TailItemBytes = -1);
        Assert.True(CpuKernelTuning.ValidTail(0));
    }

    [Fact]
    public void ItemSplit_TailCutsTheLastItemsSmallAndCoversEveryRowOnce()
    {
        // A Mixtral gate phase: 14336 rows in items of 32 (512 KB), 16 participants, tail items of 8 rows (128 KB).
        var uniform = CpuExpertKernel.ItemSplit.Uniform(14336, 32);
        Assert.Equal(448, uniform.Items);
        var tailed = uniform.WithTail(14336, participants: 16, smallRows: 8);
        Assert.Equal(432, tailed.Big); // 16 full items' rows left at the end...
        Assert.Equal(432 + 64, tailed.Items); // ...as 64 items of 8 rows
        foreach (var (split, rows) in new[] { (tailed, 14336), (CpuExpertKernel.ItemSplit.Uniform(4096, 20).WithTail(4096, 16, 4), 4096),
            (CpuExpertKernel.ItemSplit.Uniform(100, 12).WithTail(100, 16, 4), 100), (CpuExpertKernel.ItemSplit.Uniform(1003, 36).WithTail(1003, 3, 8), 1003) })
        {
            int next = 0;
            for (int item = 0; item < split.Items; item++)
            {
                var (begin, end) = split.Rows(item, rows);
                Assert.Equal(next, begin);
                Assert.True(end > begin, $"{split}: item {item} is empty");
                Assert.True(end - begin <= (item < split.Big ? split.BigRows : split.SmallRows));
                next = end;
            }
            Assert.Equal(rows, next);
        }
        // Fewer rows than one item per participant: all small. Small items not smaller, or no rows: unchanged.
        Assert.Equal(0, CpuExpertKernel.ItemSplit.Uniform(100, 12).WithTail(100, 16, 4).Big);
        Assert.Equal(uniform, uniform.WithTail(14336, 16, 32));
        Assert.Equal(0, CpuExpertKernel.ItemSplit.Uniform(0, 32).WithTail(0, 16, 8).Items);
    }

    [Theory]
    [InlineData("l1", PrefetchLevel.L1)]
    [InlineData(" L2 ", PrefetchLevel.L2)]
    [InlineData("t2", PrefetchLevel.L3)]
    [InlineData("NTA", PrefetchLevel.NonTemporal)]
    [InlineData("l4", null)]
    [InlineData("", null)]
    [InlineData(null, null)]
    public void ParseLevel_ReadsTheNamesItPrints(string? text, PrefetchLevel? expected)
    {
        Assert.Equal(expected, CpuKernelTuning.ParseLevel(text));
        if (expected is { } level) Assert.Equal(level, CpuKernelTuning.ParseLevel(CpuKernelTuning.Name(level)));
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
        var saved = (CpuKernelTuning.PrefetchBytes, CpuKernelTuning.ItemBytes, CpuKernelTuning.PrefetchLevel, CpuKernelTuning.NextRowsPrefetch);
        try
        {
            var reference = Run();
            foreach (var (prefetch, item, level, next) in new[]
            {
                (0, 16 * 1024, PrefetchLevel.L1, false), (4096, 1 << 20, PrefetchLevel.L2, true), (64, 48 * 1024, PrefetchLevel.L3, true),
                (1024, 16 * 1024, PrefetchLevel.NonTemporal, true), (0, 128 * 1024, PrefetchLevel.L1, true),
            })
            {
                (CpuKernelTuning.PrefetchBytes, CpuKernelTuning.ItemBytes, CpuKernelTuning.PrefetchLevel, CpuKernelTuning.NextRowsPrefetch) = (prefetch, item, level, next);
                Assert.True((Run() == reference).all().item<bool>(), $"prefetch {prefetch}, item {item}, level {level}, next rows {next}");
            }
        }
        finally
        {
            (CpuKernelTuning.PrefetchBytes, CpuKernelTuning.ItemBytes, CpuKernelTuning.PrefetchLevel, CpuKernelTuning.NextRowsPrefetch) = saved;
        }
    }

    [Theory]
    [InlineData(CpuIsa.Scalar)]
    [InlineData(CpuIsa.Avx2)]
    [InlineData(CpuIsa.Avx512)]
    public void SwiGlu_SpreadRows_BitIdenticalToAdjacentRows(CpuIsa isa)
    {
        if (isa == CpuIsa.Avx512 && CpuExpertKernel.BestIsa != CpuIsa.Avx512 || isa == CpuIsa.Avx2 && CpuExpertKernel.BestIsa == CpuIsa.Scalar)
            return; // this CPU lacks the path (CI's runners have AVX2 at least; the H100 host AVX-512)
        using var pool = new CpuWorkerPool(threads: 3);
        using var scope = NewDisposeScope();
        // 1003 hidden: a tail past the last whole vector block and odd down items; the slice of 997 rows: a w2 row stride
        // longer than its rows and an odd last gate item. Across the item sizes and formats, the last items of a phase hold
        // 1, 5 or 7 gate rows and 3, 7, 11 or 35 down rows: the paths for an odd pair and for fewer than four rows. Each is
        // also run with small tail items, which cut the phases' last rows differently again.
        const int hidden = 1003, intermediate = 1100, slice = 997;
        var saved = CpuKernelSettings.Current;
        try
        {
            foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32 })
            {
                var (w1, w3, w2) = (randn(intermediate, hidden).to(dtype), randn(intermediate, hidden).to(dtype), randn(hidden, intermediate).to(dtype));
                var type = dtype switch { ScalarType.BFloat16 => WeightType.BF16, ScalarType.Float16 => WeightType.F16, _ => WeightType.F32 };
                foreach (int rows in new[] { intermediate, slice })
                foreach (int tokens in new[] { 1, 3, 17 })
                foreach (int itemKb in new[] { 16, 40, 128 })
                foreach (bool next in new[] { false, true })
                {
                    var weights = new ExpertWeights((void*)TensorMemory.DataPtr(w1), (void*)TensorMemory.DataPtr(w3), (void*)TensorMemory.DataPtr(w2),
                        hidden, rows, type, w2Stride: intermediate);
                    var x = randn(tokens, hidden);
                    Tensor Run(bool spread, int tailKb = 0)
                    {
                        var y = full(tokens, hidden, float.NaN); // every output must be written
                        (saved with { ItemBytes = itemKb * 1024, NextRows = next, SpreadRows = spread, TailItemBytes = tailKb * 1024 }).Apply();
                        CpuExpertKernel.ForceIsa = isa;
                        try { CpuExpertKernel.SwiGlu(pool, (float*)TensorMemory.DataPtr(x), tokens, weights, (float*)TensorMemory.DataPtr(y)); }
                        finally { CpuExpertKernel.ForceIsa = null; }
                        return y;
                    }
                    var adjacent = Run(false);
                    var spread = Run(true);
                    string what = $"{dtype} rows {rows} tokens {tokens} item {itemKb} KB next {next}";
                    Assert.False(spread.isnan().any().item<bool>(), what + ": an output left unwritten");
                    Assert.True((spread == adjacent).all().item<bool>(), what);
                    // Tail items of 16 KB (4 gate rows of the 16-bit formats, fewer than the items of 40 and 128 KB hold).
                    foreach (bool order in new[] { true, false })
                    {
                        var tailed = Run(order, tailKb: 16);
                        Assert.False(tailed.isnan().any().item<bool>(), what + $": an output left unwritten with tail items ({CpuKernelTuning.RowOrderName(order)})");
                        Assert.True((tailed == adjacent).all().item<bool>(), what + $": tail items ({CpuKernelTuning.RowOrderName(order)})");
                    }
                    if (tokens == 1 && itemKb == 40 && !next)
                    {
                        // And both are the expert: the same math in fp32 by libtorch.
                        var (g, u) = (x.matmul(w1.to(ScalarType.Float32)[..rows].t()), x.matmul(w3.to(ScalarType.Float32)[..rows].t()));
                        var expected = (nn.functional.silu(g) * u).matmul(w2.to(ScalarType.Float32)[.., ..rows].t());
                        Assert.True((spread - expected).abs().max().item<float>() <= 1e-4 * expected.abs().max().item<float>(), what + ": vs libtorch");
                    }
                }
            }
        }
        finally { saved.Apply(); }
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
    public void Settings_ParseWhatTheyPrintAndApplyAsAWhole()
    {
        var s = CpuKernelSettings.Parse(" 2048, L3 ,1,64");
        Assert.Equal(new CpuKernelSettings(2048, PrefetchLevel.L3, true, 64 * 1024, CpuKernelTuning.SpreadRows, CpuKernelTuning.TailItemBytes), s); // left out: kept
        Assert.Equal($"2048,l3,1,64,{CpuKernelTuning.RowOrderName(CpuKernelTuning.SpreadRows)},{CpuKernelTuning.TailItemBytes / 1024}", s.ToString());
        Assert.Equal(s, CpuKernelSettings.Parse(s.ToString()));
        Assert.Equal(CpuKernelTuning.ItemBytes, CpuKernelSettings.Parse("0,nta,0").ItemBytes); // item size left out: kept
        var spread = CpuKernelSettings.Parse("1024,l1,0,512,SPREAD,128");
        Assert.Equal(new CpuKernelSettings(1024, PrefetchLevel.L1, false, 512 * 1024, SpreadRows: true, TailItemBytes: 128 * 1024), spread);
        Assert.Equal("1024,l1,0,512,spread,128", spread.ToString());
        Assert.Equal(spread, CpuKernelSettings.Parse(spread.ToString()));
        var adjacent = CpuKernelSettings.Parse("1024,l1,0,128,adjacent,0");
        Assert.False(adjacent.SpreadRows);
        Assert.Equal(0, adjacent.TailItemBytes);
        Assert.Equal("1024,l1,0,128,adjacent,0", adjacent.ToString());
        Assert.Equal(CpuKernelTuning.TailItemBytes, CpuKernelSettings.Parse("1024,l1,0,128,adjacent").TailItemBytes); // tail left out: kept
        Assert.Contains("'zig' is not a row order", Assert.Throws<ArgumentException>(() => CpuKernelSettings.Parse("1024,l1,0,512,zig")).Message);
        Assert.Contains("'1' is not a tail item size", Assert.Throws<ArgumentException>(() => CpuKernelSettings.Parse("1024,l1,0,64,spread,1")).Message);
        foreach (string bad in new[] { "", "1024", "1024,l1", "1024,l1,1,64,9", "-64,l1,0", "1024,l0,0", "1024,l1,yes", "1024,l1,0,9000",
            "1024,l1,0,64,spread,1", "1024,l1,0,64,spread,-16", "1024,l1,0,64,spread,8192", "1024,l1,0,64,spread,128,x" })
            Assert.Throws<ArgumentException>(() => CpuKernelSettings.Parse(bad));
        var saved = CpuKernelSettings.Current;
        try
        {
            s.Apply();
            Assert.Equal(s, CpuKernelSettings.Current);
            spread.Apply();
            Assert.True(CpuKernelTuning.SpreadRows);
            adjacent.Apply();
            Assert.False(CpuKernelTuning.SpreadRows);
            s.Apply();
            Assert.Throws<ArgumentOutOfRangeException>(() => (s with { PrefetchBytes = 0, ItemBytes = 1 }).Apply());
            Assert.Throws<ArgumentOutOfRangeException>(() => (s with { PrefetchBytes = 0, TailItemBytes = 1024 }).Apply());
            Assert.Equal(s, CpuKernelSettings.Current); // all or none: the valid prefetch distance was not set either
        }
        finally { saved.Apply(); }
    }

    [Theory]
    [InlineData("FIDDLER_KERNEL_PREFETCH_LEVEL", "l9", "l1")] // the good values are the defaults: another class that
    [InlineData("FIDDLER_KERNEL_NEXT_ROWS", "yes", "0")]      // first touches CpuKernelTuning meanwhile starts as usual
    [InlineData("FIDDLER_KERNEL_SPREAD_ROWS", "on", "1")]
    public void CheckEnvironment_AnUnknownChoice_NamesIt(string name, string bad, string good)
    {
        string? before = Environment.GetEnvironmentVariable(name);
        try
        {
            Environment.SetEnvironmentVariable(name, bad);
            var e = Assert.Throws<ArgumentException>(CpuKernelTuning.CheckEnvironment);
            Assert.Contains($"{name}={bad}", e.Message);
            Environment.SetEnvironmentVariable(name, good);
            CpuKernelTuning.CheckEnvironment();
        }
        finally
        {
            Environment.SetEnvironmentVariable(name, before);
        }
    }

    [Theory]
    [InlineData("FIDDLER_KERNEL_ITEM_KB", "2", "FIDDLER_KERNEL_ITEM_KB=2 is out of range (16..4096 KB)", "256")]
    [InlineData("FIDDLER_KERNEL_ITEM_KB", "lots", "FIDDLER_KERNEL_ITEM_KB=lots", "512")]
    [InlineData("FIDDLER_KERNEL_TAIL_KB", "8", "FIDDLER_KERNEL_TAIL_KB=8 is out of range (0 or 16..4096 KB)", "0")]
    [InlineData("FIDDLER_KERNEL_TAIL_KB", "-16", "FIDDLER_KERNEL_TAIL_KB=-16", "128")]
    public void CheckEnvironment_AValueOutOfRange_NamesIt(string name, string bad, string message, string good)
    {
        string? before = Environment.GetEnvironmentVariable(name);
        try
        {
            Environment.SetEnvironmentVariable(name, bad);
            Assert.Contains(message, Assert.Throws<ArgumentException>(CpuKernelTuning.CheckEnvironment).Message);
            Environment.SetEnvironmentVariable(name, good);
            CpuKernelTuning.CheckEnvironment();
        }
        finally
        {
            Environment.SetEnvironmentVariable(name, before);
        }
    }
}

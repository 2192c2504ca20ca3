using System.Runtime.InteropServices;
using Xunit;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Tests.Kernels;

// CheckEnvironment reads FIDDLER_HUGE_PAGES, which the CLI checks at start: run apart from the in-process CLI tests.
[Collection(Fiddler.Tests.Host.ConsoleCollection.Name)]
public unsafe class HugePagesTests
{
    [Fact]
    public void ProcessHugeBytes_OnLinux_ReadsTheRollup()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/smaps_rollup")) return;
        Assert.True(HugePages.ProcessHugeBytes() is >= 0);
    }

    [Fact]
    public void HostMemory_AvailableBytes_IsPositiveAndReadsProcFields()
    {
        Assert.True(HostMemory.AvailableBytes() is > 0);
        string file = Path.Combine(Path.GetTempPath(), $"meminfo-{Guid.NewGuid():N}");
        File.WriteAllText(file, "MemTotal:       131981020 kB\nMemAvailable:    1000 kB\n");
        try
        {
            Assert.Equal(1000L * 1024, HostMemory.KiBField(file, "MemAvailable:"));
            Assert.Null(HostMemory.KiBField(file, "SwapFree:"));
            Assert.Null(HostMemory.KiBField(file + ".missing", "MemAvailable:"));
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public void Advise_CoversOnlyWholeHugePagesInside()
    {
        const int huge = 2 << 20;
        void* block = NativeMemory.AlignedAlloc((nuint)(4 * huge), (nuint)huge);
        try
        {
            Assert.False(HugePages.Advise((nint)block + 4096, huge)); // no whole 2 MiB page inside
            Assert.False(HugePages.Advise(0, huge));
            Assert.False(HugePages.Advise((nint)block, 0));
            // Where the kernel has transparent huge pages, a range holding whole 2 MiB pages is accepted.
            if (OperatingSystem.IsLinux() && File.Exists("/sys/kernel/mm/transparent_hugepage/enabled"))
            {
                // As a large tensor's memory: 64 bytes past a 2 MiB boundary. Its whole range counts as advised.
                Assert.True(HugePages.Advise((nint)block + 64, 3 * huge));
                Assert.True(HugePages.AnyAdvised);
                Assert.True(HugePages.IsAdvised((nint)block + 64));
                Assert.True(HugePages.IsAdvised((nint)block + 3 * huge + 63));
                Assert.False(HugePages.IsAdvised((nint)block + 63));
                Assert.False(HugePages.IsAdvised((nint)block + 3 * huge + 64));
                // Advised again (memory reused after a free without Forget): the overlapping range is replaced, not kept.
                Assert.True(HugePages.Advise((nint)block, 4 * huge));
                Assert.True(HugePages.IsAdvised((nint)block));
            }
        }
        finally
        {
            HugePages.Forget((nint)block, 4 * huge);
            NativeMemory.AlignedFree(block);
        }
        Assert.False(HugePages.IsAdvised((nint)block + huge));
    }

    [Theory]
    [InlineData(null, HugePagePolicy.Off)]
    [InlineData(" 0 ", HugePagePolicy.Off)]
    [InlineData("1", HugePagePolicy.All)]
    [InlineData("EVEN", HugePagePolicy.EvenLayers)]
    [InlineData("odd", null)]
    [InlineData("yes", null)]
    public void ParsePolicy_ReadsZeroOneAndEven(string? text, HugePagePolicy? expected) => Assert.Equal(expected, HugePages.ParsePolicy(text));

    [Fact]
    public void ForLayer_FollowsThePolicy()
    {
        var before = HugePages.Policy;
        try
        {
            HugePages.Policy = HugePagePolicy.Off;
            Assert.False(HugePages.ForLayer(0));
            HugePages.Policy = HugePagePolicy.All;
            Assert.True(HugePages.ForLayer(0) && HugePages.ForLayer(1));
            HugePages.Policy = HugePagePolicy.EvenLayers;
            Assert.Equal([true, false, true, false], Enumerable.Range(0, 4).Select(HugePages.ForLayer));
            Assert.Throws<ArgumentOutOfRangeException>(() => HugePages.Policy = (HugePagePolicy)9);
        }
        finally { HugePages.Policy = before; }
    }

    [Fact]
    public void KernelStats_CountRegionsOnAdvisedMemoryApart()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/sys/kernel/mm/transparent_hugepage/enabled")) return; // no THP here
        const int hidden = 1024, intermediate = 1024; // bf16: each matrix exactly one 2 MiB page
        const long huge = 2L << 20;
        using var pool = new Fiddler.Kernels.Experts.CpuWorkerPool(threads: 2);
        byte* block = (byte*)NativeMemory.AlignedAlloc((nuint)(7 * huge), (nuint)huge) + 64; // as a tensor: just past a boundary
        float* x = (float*)NativeMemory.AlignedAlloc(hidden * sizeof(float), 64), y = (float*)NativeMemory.AlignedAlloc(hidden * sizeof(float), 64);
        try
        {
            new Span<byte>(block, (int)(6 * huge)).Clear();
            new Span<float>(x, hidden).Fill(0.5f);
            Assert.True(HugePages.Advise((nint)block, 3 * huge));
            var advised = new Fiddler.Kernels.Experts.ExpertWeights(block, block + huge, block + 2 * huge, hidden, intermediate, Fiddler.Kernels.Experts.WeightType.BF16);
            var plain = new Fiddler.Kernels.Experts.ExpertWeights(block + 3 * huge, block + 4 * huge, block + 5 * huge, hidden, intermediate, Fiddler.Kernels.Experts.WeightType.BF16);
            var before = Fiddler.Kernels.Experts.CpuExpertKernel.HugePageStats;
            Fiddler.Kernels.Experts.CpuExpertKernel.SwiGlu(pool, x, 1, advised, y);
            var afterAdvised = Fiddler.Kernels.Experts.CpuExpertKernel.HugePageStats;
            Assert.Equal(1, afterAdvised.Regions - before.Regions);
            Assert.Equal(advised.Bytes, afterAdvised.WeightBytes - before.WeightBytes);
            Fiddler.Kernels.Experts.CpuExpertKernel.SwiGlu(pool, x, 1, plain, y);
            Assert.Equal(afterAdvised.Regions, Fiddler.Kernels.Experts.CpuExpertKernel.HugePageStats.Regions); // not counted there
        }
        finally
        {
            HugePages.Forget((nint)block, 6 * huge);
            NativeMemory.AlignedFree(block - 64);
            NativeMemory.AlignedFree(x);
            NativeMemory.AlignedFree(y);
        }
    }

    [Fact]
    public void KernelDecodeReport_SplitsByPageSizeOnlyWhenSomeRegionsWereOnHugePages()
    {
        var plain = Fiddler.Host.Cli.BenchRun.KernelDecodeReport(10, 50, 5_000_000_000, 0, 0, 0);
        Assert.Equal(100, plain["gb_s"]);
        Assert.False(plain.ContainsKey("huge_page_gb_s"));
        var split = Fiddler.Host.Cli.BenchRun.KernelDecodeReport(10, 50, 5_000_000_000, 4, 16, 2_000_000_000);
        Assert.Equal(125, split["huge_page_gb_s"]);   // 2 GB in 16 ms
        Assert.Equal(4, split["huge_page_regions"]);
        Assert.Equal(88.2, split["small_page_gb_s"]);  // 3 GB in 34 ms
        Assert.Equal(6, split["small_page_regions"]);
        var allHuge = Fiddler.Host.Cli.BenchRun.KernelDecodeReport(10, 50, 5_000_000_000, 10, 50, 5_000_000_000);
        Assert.Equal(100, allHuge["huge_page_gb_s"]);
        Assert.False(allHuge.ContainsKey("small_page_gb_s")); // no region on small pages: no rate for them
    }

    [Fact]
    public void ProfileKey_NamesHugePagesOnlyWhenCalibrationUsesThem()
    {
        var before = HugePages.Policy;
        try
        {
            string settings = Fiddler.Kernels.Experts.CpuKernelSettings.Current.ToString();
            HugePages.Policy = HugePagePolicy.Off;
            Assert.Equal(settings, Fiddler.Kernels.Experts.CpuKernelSettings.ProfileKey);
            HugePages.Policy = HugePagePolicy.EvenLayers; // calibration's experts stay on small pages
            Assert.Equal(settings, Fiddler.Kernels.Experts.CpuKernelSettings.ProfileKey);
            HugePages.Policy = HugePagePolicy.All;
            Assert.Equal(settings + ",huge-pages", Fiddler.Kernels.Experts.CpuKernelSettings.ProfileKey);
        }
        finally { HugePages.Policy = before; }
    }

    [Fact]
    public void CheckEnvironment_OtherThanZeroOrOne_NamesTheVariable()
    {
        string? before = Environment.GetEnvironmentVariable("FIDDLER_HUGE_PAGES");
        try
        {
            Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", "yes");
            Assert.Contains("FIDDLER_HUGE_PAGES=yes is not 0, 1 or even", Assert.Throws<ArgumentException>(HugePages.CheckEnvironment).Message);
            foreach (string good in new[] { "1", "even", "0", "" })
            {
                Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", good);
                HugePages.CheckEnvironment();
            }
        }
        finally { Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", before); }
    }
}

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
    public void Advise_CoversOnlyWholeHugePagesInside()
    {
        const long huge = 2L << 20;
        void* block = NativeMemory.AlignedAlloc((nuint)(4 * huge), (nuint)huge);
        try
        {
            Assert.False(HugePages.Advise((nint)block + 4096, huge)); // no whole 2 MiB page inside
            Assert.False(HugePages.Advise(0, huge));
            Assert.False(HugePages.Advise((nint)block, 0));
            // Where the kernel has transparent huge pages, a range holding whole 2 MiB pages is accepted.
            if (OperatingSystem.IsLinux() && File.Exists("/sys/kernel/mm/transparent_hugepage/enabled"))
                Assert.True(HugePages.Advise((nint)block + 4096, 3 * huge));
        }
        finally { NativeMemory.AlignedFree(block); }
    }

    [Fact]
    public void CheckEnvironment_OtherThanZeroOrOne_NamesTheVariable()
    {
        string? before = Environment.GetEnvironmentVariable("FIDDLER_HUGE_PAGES");
        try
        {
            Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", "yes");
            Assert.Contains("FIDDLER_HUGE_PAGES=yes is not 0 or 1", Assert.Throws<ArgumentException>(HugePages.CheckEnvironment).Message);
            Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", "1");
            HugePages.CheckEnvironment();
        }
        finally { Environment.SetEnvironmentVariable("FIDDLER_HUGE_PAGES", before); }
    }
}

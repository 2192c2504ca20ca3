using Xunit;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Tests.Kernels;

public class HugePagesTests
{
    [Fact]
    public void ProcessHugeBytes_OnLinux_ReadsTheRollup()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/smaps_rollup")) return;
        Assert.True(HugePages.ProcessHugeBytes() is >= 0);
    }
}

using Xunit;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels;

public class HugePagesTests
{
    [Fact]
    public void Advise_AnUntouchedLargeHostTensor_IsAcceptedOnLinux_AndTheTensorStaysUsable()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var t = empty([4L << 20], ScalarType.Float32);              // 16 MiB, not yet touched
        Assert.True(HugePages.Advise(TensorMemory.DataPtr(t), t.NumberOfElements * 4));
        t.fill_(3);
        Assert.Equal(3f * (4 << 20), t.sum().item<float>());
        Assert.NotNull(HugePages.ProcessHugeBytes());
    }

    [Fact]
    public void Advise_NothingToAdvise_ReturnsFalse()
    {
        Assert.False(HugePages.Advise(0, 1 << 20));
        using var t = empty([16], ScalarType.Float32);
        Assert.False(HugePages.Advise(TensorMemory.DataPtr(t), 0));
    }
}

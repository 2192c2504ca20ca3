using Fiddler.Actors.Engine;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Actors.Engine;

public sealed class EngineOptionsTests
{
    [Fact]
    public void DefaultCpuThreads_LeavesACoreForTheGpuThread()
    {
        int cores = Environment.ProcessorCount;
        Assert.Equal(Math.Max(1, cores - 1), OffloadEngine.DefaultCpuThreads(new EngineOptions { Device = CPU }));
        Assert.Equal(7, OffloadEngine.DefaultCpuThreads(new EngineOptions { Device = CPU, CpuThreads = 7 }));
    }
}

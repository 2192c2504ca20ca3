using Fiddler.Kernels.Cuda;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Cuda;

/// <summary>The CUDA interop on a machine without libcudart: reports unavailability, never crashes, explains itself.</summary>
public sealed class CudaRuntimeTests
{
    [Fact]
    public void IsAvailable_NeverThrows_AndAgreesWithAnIndependentResolution()
    {
        bool available = CudaRuntime.IsAvailable;
        var independent = CudaLibrary.TryLoad(CudaLibraryResolver.DefaultCandidates(), out string reason);
        Assert.True(available == (independent is not null), $"facade {available}, independent resolution: {reason}");
        Assert.Equal(available, CudaRuntime.UnavailableReason is null);
    }

    [NoCudartFact]
    public void WithoutCudart_IsAvailableFalse_ReasonListsWhatWasTried()
    {
        Assert.False(CudaRuntime.IsAvailable);
        Assert.Contains("libcudart.so.13: not loadable", CudaRuntime.UnavailableReason);
        Assert.Contains("libcudart.so.12: not loadable", CudaRuntime.UnavailableReason);
    }

    [NoCudartFact]
    public void WithoutCudart_Library_ThrowsNotSupportedWithHowToFix()
    {
        var e = Assert.Throws<CudaUnavailableException>(() => CudaRuntime.Library);
        Assert.IsAssignableFrom<NotSupportedException>(e);
        Assert.Contains("libcudart", e.Message);
        Assert.Contains("TorchRuntime.Initialize", e.Message);
        Assert.Contains(CudaLibraryResolver.ExplicitPathEnvironmentVariable, e.Message);
    }

    [NoCudartFact]
    public void WithoutCudart_EveryEntryPointThrowsCudaUnavailable()
    {
        Assert.Throws<CudaUnavailableException>(() => CudaRuntime.GetDeviceCount());
        Assert.Throws<CudaUnavailableException>(() => CudaRuntime.StreamCreateWithFlags(CudaRuntime.StreamNonBlocking));
        Assert.Throws<CudaUnavailableException>(() => CudaRuntime.MemcpyAsync(1, 2, 3, CudaMemcpyKind.HostToDevice, CudaRuntime.LegacyDefaultStream));
        Assert.Throws<CudaUnavailableException>(() => CudaStream.Create(0));
        Assert.Throws<CudaUnavailableException>(() => CudaEvent.Create(0));
        Assert.Throws<CudaUnavailableException>(() => CudaEvent.CreateTiming(0));
        Assert.Throws<CudaUnavailableException>(() => new PinnedBuffer(4096));
        Assert.Throws<CudaUnavailableException>(() => PinnedMemory.Register(4096, 4096));
        Assert.Throws<CudaUnavailableException>(() => PinnedMemory.Unregister(4096));
    }

    [NoCudartFact]
    public void WithoutCudart_ErrorTextComesFromTheTable()
    {
        Assert.False(CudaRuntime.TryGetErrorText(1, out _, out _));
        CudaRuntime.ClearLastError(); // a no-op, not a crash
        Assert.Equal(CudaErrors.DescribeFromTable(712), CudaErrors.Describe(712));
    }

    [NoCudartFact]
    public void WithoutCudart_WeightStager_ThrowsCudaUnavailable()
    {
        var e = Assert.Throws<CudaUnavailableException>(() => new WeightStager(new Device(DeviceType.CUDA, 0), ExpertShape.Mixtral8x7B, 2));
        Assert.Contains("libcudart", e.Message);
        Assert.Throws<CudaUnavailableException>(() => new WeightStager(CPU, new ExpertShape(8, 16, ScalarType.Float32), 1));
    }
}

using Fiddler.Kernels.Cuda;
using Xunit;

namespace Fiddler.Tests.Kernels.Cuda;

/// <summary>cudaError_t → text, and the exception every failing call throws. Independent of whether libcudart is present.</summary>
public sealed class CudaErrorsTests
{
    [Theory]
    [InlineData(1, "cudaErrorInvalidValue (1): invalid argument")]
    [InlineData(2, "cudaErrorMemoryAllocation (2): out of memory")]
    [InlineData(100, "cudaErrorNoDevice (100): no CUDA-capable device is detected")]
    [InlineData(600, "cudaErrorNotReady (600): device not ready")]
    [InlineData(712, "cudaErrorHostMemoryAlreadyRegistered (712): part or all of the requested memory range is already mapped")]
    [InlineData(713, "cudaErrorHostMemoryNotRegistered (713): pointer does not correspond to a registered memory region")]
    public void DescribeFromTable_KnownCode_NameCodeAndMessage(int code, string expected) =>
        Assert.Equal(expected, CudaErrors.DescribeFromTable(code));

    [Fact]
    public void DescribeFromTable_UnknownCode_SaysSo() =>
        Assert.Equal("cudaError(12345): unknown error code", CudaErrors.DescribeFromTable(12345));

    [Fact]
    public void KnownTable_NamesAreUniqueCudaErrorNames()
    {
        var names = CudaErrors.Known.Values.Select(v => v.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.All(CudaErrors.Known, kv => Assert.True(kv.Key == 0 ? kv.Value.Name == "cudaSuccess" : kv.Value.Name.StartsWith("cudaError", StringComparison.Ordinal)));
    }

    [Fact]
    public void CudaException_NamesFunctionErrorAndCode()
    {
        var e = new CudaException("cudaMemcpyAsync", CudaErrors.InvalidValue);
        Assert.Equal("cudaMemcpyAsync", e.Function);
        Assert.Equal(1, e.Code);
        Assert.Equal("cudaErrorInvalidValue", e.ErrorName);
        Assert.StartsWith("cudaMemcpyAsync failed: cudaErrorInvalidValue (1): ", e.Message);
    }

    [Fact]
    public void Check_Success_DoesNotThrow() => CudaRuntime.Check(CudaErrors.Success, "cudaStreamSynchronize");

    [Fact]
    public void Check_Error_ThrowsCudaExceptionWithFunctionName()
    {
        var e = Assert.Throws<CudaException>(() => CudaRuntime.Check(CudaErrors.MemoryAllocation, "cudaHostAlloc"));
        Assert.Equal("cudaHostAlloc", e.Function);
        Assert.Equal(CudaErrors.MemoryAllocation, e.Code);
        Assert.Contains("cudaErrorMemoryAllocation", e.Message);
    }
}

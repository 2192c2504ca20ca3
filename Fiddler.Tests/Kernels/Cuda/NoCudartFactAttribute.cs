using Fiddler.Kernels.Cuda;
using Xunit;

namespace Fiddler.Tests.Kernels.Cuda;

/// <summary>
/// A test of the no-CUDA path (what users get on a machine without libcudart, like CI). Where this process can load
/// libcudart it is reported as skipped, never as passed; the GPU path is checked by <c>fiddler cuda-selftest</c>.
/// </summary>
public sealed class NoCudartFactAttribute : FactAttribute
{
    public NoCudartFactAttribute()
    {
        if (CudaRuntime.IsAvailable)
            Skip = $"libcudart is loadable here ({CudaRuntime.Library.Path}): this checks the no-CUDA path; run `fiddler cuda-selftest` for the GPU path";
    }
}

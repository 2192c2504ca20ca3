using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Runtime;

/// <summary>Raw addresses of tensor data, for memcpy from memory-mapped checkpoints and, later, CUDA interop.</summary>
public static partial class TensorMemory
{
    // TorchSharp's own native shim exposes the data pointer (at the tensor's storage offset); TorchSharp 0.107 has no
    // public managed accessor for it that works for every dtype.
    [LibraryImport("LibTorchSharp")]
    private static partial IntPtr THSTensor_data(IntPtr handle);

    public static IntPtr DataPtr(Tensor t)
    {
        IntPtr p = THSTensor_data(t.Handle);
        if (p == IntPtr.Zero) CheckForErrors();
        return p;
    }

    private static void CheckForErrors() => TorchSharp.torch.CheckForErrors();
}

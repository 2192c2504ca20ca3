using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// Switches for libtorch's scaled-dot-product-attention backends, which TorchSharp 0.107 does not expose
/// (PyTorch's <c>torch.backends.cuda.enable_cudnn_sdp</c>). Calls ATen's global context directly.
/// </summary>
public static partial class AttentionBackends
{
    [LibraryImport("torch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
    private static partial IntPtr GlobalContext();

    [LibraryImport("torch_cpu", EntryPoint = "_ZN2at7Context14setSDPUseCuDNNEb")]
    private static partial void SetSdpUseCuDnn(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);

    /// <summary>
    /// Turns the cuDNN attention backend off. Why: it builds an execution plan per new key length, and decoding
    /// changes the key length every step — measured 34 ms per layer per decode step on an H100 with PyTorch 2.11,
    /// against well under 1 ms with the flash backend. Returns false when this libtorch lacks the switch.
    /// </summary>
    public static bool DisableCuDnn()
    {
        try
        {
            SetSdpUseCuDnn(GlobalContext(), false);
            return true;
        }
        catch (EntryPointNotFoundException) { return false; }
        catch (DllNotFoundException) { return false; }
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// A tensor's sizes, and scalar arguments, without leaving work for .NET's finalizer. TorchSharp's <c>Tensor.shape</c> (and <c>stride()</c>)
/// fill a pinned array object that is never unregistered from finalization, so each call stays alive through the next
/// collection and then runs on the finalizer thread; <c>size(dim)</c> returns the number directly. On the decode path,
/// called a few hundred times per token, those objects made the one collection in a full-size decode window pause every
/// thread for ~330 ms (H200 host, 2026-11-28). Use these there; <c>shape</c> is fine off it.
/// </summary>
public static class TensorDims
{
    /// <summary>The scalar 1, made once: each implicit conversion of a number to a <c>Scalar</c> argument makes one more
    /// object for the finalizer (TorchSharp never disposes those).</summary>
    public static readonly Scalar One = 1.ToScalar();

    /// <summary>The sizes of every dimension (what <c>shape</c> gives), read one by one.</summary>
    public static long[] Dims(this Tensor t)
    {
        var dims = new long[t.dim()];
        for (int i = 0; i < dims.Length; i++) dims[i] = t.size(i);
        return dims;
    }
}

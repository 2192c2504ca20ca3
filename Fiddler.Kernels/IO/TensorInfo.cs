namespace Fiddler.Kernels.IO;

/// <summary>
/// One tensor entry of a safetensors header, already validated.
/// </summary>
/// <param name="Name">Tensor name as written in the header.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions (all non-negative; empty for a scalar). Do not mutate: the array is shared.</param>
/// <param name="Offset">Absolute byte offset of the data in the file (header and length prefix included).</param>
/// <param name="Length">Byte length of the data; equals the element count times the element size.</param>
public sealed record TensorInfo(string Name, SafetensorsDType DType, long[] Shape, long Offset, long Length)
{
    /// <summary>Number of elements (product of <see cref="Shape"/>; 1 for a scalar).</summary>
    public long ElementCount => Length / DType.ElementSize();

    /// <summary>Shape formatted like "[512,64]", for messages.</summary>
    public string ShapeText => FormatShape(Shape);

    internal static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(",", shape) + "]";
}

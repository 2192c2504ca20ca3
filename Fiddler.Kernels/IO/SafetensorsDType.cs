namespace Fiddler.Kernels.IO;

/// <summary>
/// Element types a safetensors file may declare: the format's standard ones, so a checkpoint may carry tensors this
/// engine does not use (quantisation metadata, fp8 scales) and still open; a weight the model needs in a type it
/// cannot compute with is refused when the weights are mapped. Any other dtype string in a header is rejected at
/// open time rather than surfacing later as garbage data.
/// </summary>
public enum SafetensorsDType
{
    /// <summary>bfloat16 (2 bytes).</summary>
    BF16,
    /// <summary>IEEE half precision (2 bytes).</summary>
    F16,
    /// <summary>IEEE single precision (4 bytes).</summary>
    F32,
    /// <summary>IEEE double precision (8 bytes).</summary>
    F64,
    /// <summary>Signed 64-bit integer.</summary>
    I64,
    /// <summary>Signed 32-bit integer.</summary>
    I32,
    /// <summary>Signed 16-bit integer.</summary>
    I16,
    /// <summary>Signed 8-bit integer.</summary>
    I8,
    /// <summary>Unsigned 8-bit integer.</summary>
    U8,
    /// <summary>Boolean stored as one byte.</summary>
    BOOL,
    /// <summary>Unsigned 16-bit integer.</summary>
    U16,
    /// <summary>Unsigned 32-bit integer.</summary>
    U32,
    /// <summary>Unsigned 64-bit integer.</summary>
    U64,
    /// <summary>8-bit float, 4 exponent and 3 mantissa bits.</summary>
    F8_E4M3,
    /// <summary>8-bit float, 5 exponent and 2 mantissa bits.</summary>
    F8_E5M2,
}

/// <summary>Helpers for <see cref="SafetensorsDType"/>.</summary>
public static class SafetensorsDTypeExtensions
{
    /// <summary>Size in bytes of one element of <paramref name="dtype"/>.</summary>
    public static int ElementSize(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.I16 or SafetensorsDType.U16 => 2,
        SafetensorsDType.F32 or SafetensorsDType.I32 or SafetensorsDType.U32 => 4,
        SafetensorsDType.F64 or SafetensorsDType.I64 or SafetensorsDType.U64 => 8,
        SafetensorsDType.I8 or SafetensorsDType.U8 or SafetensorsDType.BOOL or SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown safetensors dtype"),
    };

    /// <summary>The exact string used for <paramref name="dtype"/> in a safetensors header (e.g. "BF16").</summary>
    public static string ToHeaderName(this SafetensorsDType dtype) =>
        Enum.IsDefined(dtype) ? dtype.ToString()
            : throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown safetensors dtype");

    /// <summary>
    /// Parses a header dtype string. Matching is exact and case-sensitive, as in the reference implementation,
    /// so "bf16" or "Float32" are rejected instead of being silently accepted.
    /// </summary>
    public static bool TryParseHeaderName(string? name, out SafetensorsDType dtype)
    {
        // Enum.TryParse would also accept numbers ("3") and ignore nothing useful; match names explicitly.
        foreach (SafetensorsDType candidate in Enum.GetValues<SafetensorsDType>())
        {
            if (string.Equals(candidate.ToString(), name, StringComparison.Ordinal))
            {
                dtype = candidate;
                return true;
            }
        }
        dtype = default;
        return false;
    }

    /// <summary>
    /// Byte size of a tensor with the given dtype and shape, or -1 when the shape is invalid
    /// (negative dimension) or the size overflows a <see cref="long"/>.
    /// </summary>
    public static long ByteSize(this SafetensorsDType dtype, ReadOnlySpan<long> shape)
    {
        long size = dtype.ElementSize();
        foreach (long dim in shape)
        {
            if (dim < 0)
            {
                return -1;
            }
            // Overflow must not wrap: a crafted header could otherwise make a huge shape "match" a tiny span.
            try { size = checked(size * dim); }
            catch (OverflowException) { return -1; }
        }
        return size;
    }
}

using TorchSharp;

namespace Fiddler.Kernels.IO;

/// <summary>
/// Maps safetensors dtypes onto TorchSharp scalar types. Kept apart from <see cref="SafetensorsDType"/>
/// so the reader itself has no dependency on TorchSharp.
/// </summary>
public static class SafetensorsDTypeTorch
{
    /// <summary>The TorchSharp scalar type with the same in-memory layout as <paramref name="dtype"/>.</summary>
    public static torch.ScalarType ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.U8 => torch.ScalarType.Byte,
        SafetensorsDType.BOOL => torch.ScalarType.Bool,
        _ => throw new NotSupportedException($"safetensors dtype {dtype} has no TorchSharp equivalent here"),
    };
}

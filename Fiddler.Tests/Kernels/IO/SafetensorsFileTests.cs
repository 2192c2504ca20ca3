using System.Buffers.Binary;
using System.Text;
using Fiddler.Kernels.IO;
using TorchSharp;
using Xunit;

namespace Fiddler.Tests.Kernels.IO;

public sealed class SafetensorsFileTests
{
    public static TheoryData<SafetensorsDType> AllDTypes()
    {
        var data = new TheoryData<SafetensorsDType>();
        foreach (SafetensorsDType d in Enum.GetValues<SafetensorsDType>())
        {
            data.Add(d);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(AllDTypes))]
    public void WriteThenOpen_EachDType_RoundTripsDTypeShapeAndBytes(SafetensorsDType dtype)
    {
        using var dir = new TempDir();
        long[] shape = [3, 5];
        byte[] data = RawSafetensors.Pattern(15 * dtype.ElementSize(), seed: (int)dtype);
        byte[] other = RawSafetensors.Pattern(7, seed: 99);
        string path = dir.File("model.safetensors");
        SafetensorsWriter.Write(path, [("a.weight", dtype, shape, data), ("b.bias", SafetensorsDType.U8, [7L], other)]);

        using var file = new SafetensorsFile(path);
        TensorInfo info = file.Info("a.weight");
        Assert.Equal(dtype, info.DType);
        Assert.Equal(shape, info.Shape);
        Assert.Equal(data.Length, info.Length);
        Assert.Equal(15, info.ElementCount);
        Assert.Equal(data, file.GetBytes("a.weight").ToArray());
        Assert.Equal(other, file.GetBytes("b.bias").ToArray());
        Assert.Equal(0, file.DataOffset % 8);
        Assert.Equal(file.DataOffset, info.Offset);
    }

    [Fact]
    public void Write_Header_IsPaddedWithSpacesTo8Bytes()
    {
        using var dir = new TempDir();
        string path = dir.File("x.safetensors");
        SafetensorsWriter.Write(path, [("t", SafetensorsDType.F32, [1L], new byte[4])]);

        byte[] bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, n % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{", header);
        int close = header.LastIndexOf('}');
        Assert.True(close >= 0);
        Assert.All(header[(close + 1)..], c => Assert.Equal(' ', c));
    }

    [Fact]
    public void WriteThenOpen_MetadataScalarAndEmptyTensor_RoundTrip()
    {
        using var dir = new TempDir();
        string path = dir.File("m.safetensors");
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "hello" };
        SafetensorsWriter.Write(path,
            [("scalar", SafetensorsDType.F64, [], BitConverter.GetBytes(2.5)), ("empty", SafetensorsDType.F32, [0L, 4L], ReadOnlyMemory<byte>.Empty)],
            meta);

        using var file = new SafetensorsFile(path);
        Assert.Equal(meta, file.Metadata);
        Assert.Equal(2.5, BitConverter.ToDouble(file.GetBytes("scalar")));
        Assert.Empty(file.Info("scalar").Shape);
        Assert.Equal(0, file.Info("empty").Length);
        Assert.True(file.GetBytes("empty").IsEmpty);
    }

    [Fact]
    public unsafe void CopyToAndGetPointer_ExistingTensor_SeeSameBytes()
    {
        using var dir = new TempDir();
        string path = dir.File("c.safetensors");
        byte[] data = RawSafetensors.Pattern(64);
        SafetensorsWriter.Write(path, [("w", SafetensorsDType.BF16, [4L, 8L], data)]);

        using var file = new SafetensorsFile(path);
        var dest = new byte[80];
        file.CopyTo("w", dest);
        Assert.Equal(data, dest[..64]);
        byte* p = file.GetPointer("w");
        Assert.Equal(data, new ReadOnlySpan<byte>(p, 64).ToArray());
        Assert.Throws<ArgumentException>(() => file.CopyTo("w", new byte[63]));
    }

    [Fact]
    public void GetBytes_MissingTensor_ThrowsNotFoundNamingFileAndTensor()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        SafetensorsWriter.Write(path, [("present", SafetensorsDType.U8, [1L], new byte[1])]);

        using var file = new SafetensorsFile(path);
        var ex = Assert.Throws<SafetensorsTensorNotFoundException>(() => file.GetBytes("absent.weight"));
        Assert.Contains("model.safetensors", ex.Message);
        Assert.Contains("absent.weight", ex.Message);
        Assert.False(file.Contains("absent.weight"));
    }

    [Fact]
    public void GetBytes_AfterDispose_ThrowsObjectDisposed()
    {
        using var dir = new TempDir();
        string path = dir.File("d.safetensors");
        SafetensorsWriter.Write(path, [("t", SafetensorsDType.U8, [1L], new byte[1])]);
        var file = new SafetensorsFile(path);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("t").Length);
    }

    [Fact]
    public unsafe void Open_SparseFileOver2GB_ReadsTensorPast2GBAndRefusesHugeSpan()
    {
        // A sparse file costs no disk yet exercises 64-bit offsets through the mapping.
        using var dir = new TempDir();
        string path = dir.File("big.safetensors");
        const long big = 2_500_000_000L;
        string header = $"{{\"big\":{{\"dtype\":\"U8\",\"shape\":[{big}],\"data_offsets\":[0,{big}]}}," +
                        $"\"tail\":{{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[{big},{big + 8}]}}}}";
        RawSafetensors.Write(path, header);
        long dataStart = new FileInfo(path).Length;
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            fs.SetLength(dataStart + big + 8);
            fs.Position = dataStart + big;
            fs.Write([1, 0, 0, 0, 2, 0, 0, 0]);
        }

        using var file = new SafetensorsFile(path);
        Assert.Equal(dataStart + big, file.Info("tail").Offset);
        Assert.Equal([1, 2], System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(file.GetBytes("tail")).ToArray());
        Assert.Throws<InvalidOperationException>(() => file.GetBytes("big").Length);
        Assert.Equal(0, file.GetPointer("big")[big - 1]);
    }

    [Theory]
    [InlineData(SafetensorsDType.BF16, torch.ScalarType.BFloat16)]
    [InlineData(SafetensorsDType.F16, torch.ScalarType.Float16)]
    [InlineData(SafetensorsDType.F32, torch.ScalarType.Float32)]
    [InlineData(SafetensorsDType.F64, torch.ScalarType.Float64)]
    [InlineData(SafetensorsDType.I64, torch.ScalarType.Int64)]
    [InlineData(SafetensorsDType.I32, torch.ScalarType.Int32)]
    [InlineData(SafetensorsDType.I16, torch.ScalarType.Int16)]
    [InlineData(SafetensorsDType.I8, torch.ScalarType.Int8)]
    [InlineData(SafetensorsDType.U8, torch.ScalarType.Byte)]
    [InlineData(SafetensorsDType.BOOL, torch.ScalarType.Bool)]
    public void ToScalarType_EachDType_MapsToTorchType(SafetensorsDType dtype, torch.ScalarType expected)
    {
        Assert.Equal(expected, dtype.ToScalarType());
    }

    [Fact]
    public void Write_DataLengthMismatch_ThrowsArgumentNamingTensor()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<ArgumentException>(() =>
            SafetensorsWriter.Write(dir.File("bad.safetensors"), [("w", SafetensorsDType.F32, [2L], new byte[7])]));
        Assert.Contains("'w'", ex.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}

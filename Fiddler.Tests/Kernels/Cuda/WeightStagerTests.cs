using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels.Cuda;

/// <summary>The stager's host-side types and argument checks (no GPU: the GPU protocol is checked by <c>fiddler cuda-selftest</c>).</summary>
public sealed class WeightStagerTests
{
    [Fact]
    public void ExpertShape_Mixtral8x7B_352MB()
    {
        var s = ExpertShape.Mixtral8x7B;
        Assert.Equal(2, s.ElementSize);
        Assert.Equal(117_440_512, s.W1Bytes);
        Assert.Equal(352_321_536, s.TotalBytes);
        Assert.Equal([14336L, 4096L], s.W1Shape);
        Assert.Equal([4096L, 14336L], s.W2Shape);
    }

    [Fact]
    public void ExpertShape_Invalid_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new ExpertShape(0, 16, ScalarType.BFloat16).Validate());
        Assert.Throws<ArgumentException>(() => new ExpertShape(8, 16, ScalarType.ComplexFloat32).Validate());
    }

    [Fact]
    public void Constructor_BadArguments_ThrowBeforeTouchingCuda()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightStager(new Device(DeviceType.CUDA, 0), ExpertShape.Mixtral8x7B, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightStager(new Device(DeviceType.CUDA, 0), new ExpertShape(4096, -1, ScalarType.BFloat16), 2));
    }

    [Fact]
    public void HostExpert_FromTensors_PointersAndBytes()
    {
        using var w1 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w3 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w2 = zeros(8, 16, dtype: ScalarType.BFloat16);
        var h = HostExpert.FromTensors(w1, w3, w2, requirePinned: false);
        Assert.Equal(TensorMemory.DataPtr(w1), h.W1);
        Assert.Equal(TensorMemory.DataPtr(w3), h.W3);
        Assert.Equal(TensorMemory.DataPtr(w2), h.W2);
        var shape = new ExpertShape(8, 16, ScalarType.BFloat16);
        Assert.Equal((shape.W1Bytes, shape.W3Bytes, shape.W2Bytes), (h.W1Bytes, h.W3Bytes, h.W2Bytes));
        Assert.Equal(shape.TotalBytes, h.TotalBytes);
    }

    [Fact]
    public void HostExpert_RowsIn_WholeSliceAndOtherShapes()
    {
        var slot = new ExpertShape(8, 16, ScalarType.BFloat16);
        using var w1 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w3 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w2 = zeros(8, 16, dtype: ScalarType.BFloat16);
        Assert.Equal(16, HostExpert.FromTensors(w1, w3, w2, requirePinned: false).RowsIn(slot));
        Assert.Equal(5, HostExpert.Slice(w1, w3, w2, 3, 5, requirePinned: false).RowsIn(slot));
        Assert.Equal(16, HostExpert.Packed(4096, slot).RowsIn(slot)); // raw bytes: no shape to compare

        // Same byte sizes, another shape (hidden 4, intermediate 32): bytes alone would pass as a 16-row expert.
        using var o1 = zeros(32, 4, dtype: ScalarType.BFloat16);
        using var o3 = zeros(32, 4, dtype: ScalarType.BFloat16);
        using var o2 = zeros(4, 32, dtype: ScalarType.BFloat16);
        var other = HostExpert.FromTensors(o1, o3, o2, requirePinned: false);
        Assert.Equal(HostExpert.FromTensors(w1, w3, w2, requirePinned: false).TotalBytes, other.TotalBytes);
        Assert.Contains("hidden 4", Assert.Throws<ArgumentException>(() => other.RowsIn(slot)).Message);

        var whole = HostExpert.FromTensors(w1, w3, w2, requirePinned: false);
        Assert.Throws<ArgumentException>(() => (whole with { W2Bytes = whole.W2Bytes - 2 }).RowsIn(slot));
        Assert.Throws<ArgumentException>(() => (whole with { W3Bytes = whole.W3Bytes / 2 }).RowsIn(slot));
    }

    [Fact]
    public void HostExpert_FromTensors_RejectsWhatCannotBeCopiedAsIs()
    {
        using var w1 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w3 = zeros(16, 8, dtype: ScalarType.BFloat16);
        using var w2 = zeros(8, 16, dtype: ScalarType.BFloat16);
        using var w2T = zeros(16, 8, dtype: ScalarType.BFloat16).t(); // right shape, not contiguous
        using var w3Wrong = zeros(16, 4, dtype: ScalarType.BFloat16);
        using var w2Float = zeros(8, 16, dtype: ScalarType.Float32);
        Assert.Contains("w2 is not contiguous", Assert.Throws<ArgumentException>(() => HostExpert.FromTensors(w1, w3, w2T, requirePinned: false)).Message);
        Assert.Throws<ArgumentException>(() => HostExpert.FromTensors(w1, w3Wrong, w2, requirePinned: false));
        Assert.Throws<ArgumentException>(() => HostExpert.FromTensors(w1, w3, w1, requirePinned: false));
        Assert.Throws<ArgumentException>(() => HostExpert.FromTensors(w1, w3, w2Float, requirePinned: false));
        Assert.Contains("pinned", Assert.Throws<ArgumentException>(() => HostExpert.FromTensors(w1, w3, w2)).Message);
    }

    [Fact]
    public void HostExpert_Packed_BackToBack()
    {
        var shape = new ExpertShape(8, 16, ScalarType.BFloat16);
        var h = HostExpert.Packed(0x10000, shape);
        Assert.Equal(0x10000, h.W1);
        Assert.Equal(0x10000 + 256, h.W3);
        Assert.Equal(0x10000 + 512, h.W2);
        Assert.Equal(768, h.TotalBytes);
    }
}

using Fiddler.Kernels.IO;
using Xunit;

namespace Fiddler.Tests.Kernels.IO;

/// <summary>Every malformed-file case must fail at open with a message naming the file (and tensor, if any).</summary>
public sealed class SafetensorsCorruptFileTests : IDisposable
{
    private const string FileName = "model.safetensors";
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private SafetensorsFormatException OpenExpectingError(string? tensor = null)
    {
        var ex = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(_dir.File(FileName)).Dispose());
        Assert.Contains(FileName, ex.Message);
        Assert.Equal(_dir.File(FileName), ex.FilePath);
        if (tensor is not null)
        {
            Assert.Contains($"'{tensor}'", ex.Message);
            Assert.Equal(tensor, ex.TensorName);
        }
        return ex;
    }

    private void WriteHeader(string json, int dataLength = 0) =>
        RawSafetensors.Write(_dir.File(FileName), json, new byte[dataLength]);

    private static string Entry(string name, string dtype, string shape, string offsets) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}";

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    public void Open_FileShorterThan8Bytes_ThrowsNamingFile(int length)
    {
        File.WriteAllBytes(_dir.File(FileName), new byte[length]);
        Assert.Contains("too short", OpenExpectingError().Message);
    }

    [Fact]
    public void Open_HeaderLengthBeyondFile_ThrowsNamingFile()
    {
        RawSafetensors.Write(_dir.File(FileName), "{}", declaredHeaderLength: 1000);
        Assert.Contains("past the end", OpenExpectingError().Message);
    }

    [Fact]
    public void Open_HeaderLengthOverCap_ThrowsNamingFile()
    {
        RawSafetensors.Write(_dir.File(FileName), "{}", declaredHeaderLength: SafetensorsFile.MaxHeaderLength + 1);
        Assert.Contains("cap", OpenExpectingError().Message);
    }

    [Fact]
    public void Open_HeaderNotJson_ThrowsNamingFile()
    {
        WriteHeader("{\"a\": [1, 2");
        Assert.Contains("not valid JSON", OpenExpectingError().Message);
    }

    [Fact]
    public void Open_HeaderInvalidUtf8_ThrowsNamingFile()
    {
        RawSafetensors.Write(_dir.File(FileName), "{\"\"}");
        byte[] bytes = File.ReadAllBytes(_dir.File(FileName));
        bytes[10] = 0xFF; // inside the quoted key
        File.WriteAllBytes(_dir.File(FileName), bytes);
        Assert.Contains("UTF-8", OpenExpectingError().Message);
    }

    [Theory]
    [InlineData("[]")]
    [InlineData("42")]
    [InlineData("\"text\"")]
    public void Open_HeaderNotObject_ThrowsNamingFile(string json)
    {
        WriteHeader(json);
        Assert.Contains("must be a JSON object", OpenExpectingError().Message);
    }

    [Fact]
    public void Open_UnknownDType_ThrowsNamingFileTensorAndDType()
    {
        WriteHeader("{" + Entry("layer.w", "Q4_K", "[4]", "[0,4]") + "}", 4);
        Assert.Contains("'Q4_K'", OpenExpectingError("layer.w").Message);
    }

    [Theory]
    [InlineData("[-1,4]")]
    [InlineData("[1.5,4]")]
    [InlineData("[\"2\",4]")]
    [InlineData("[99999999999999999999]")]
    [InlineData("3")]
    public void Open_BadShape_ThrowsNamingFileAndTensor(string shape)
    {
        WriteHeader("{" + Entry("layer.w", "F32", shape, "[0,16]") + "}", 16);
        OpenExpectingError("layer.w");
    }

    [Fact]
    public void Open_ShapeTimesDTypeNotSpan_ThrowsWithSizesInMessage()
    {
        WriteHeader("{" + Entry("model.embed_tokens.weight", "BF16", "[512,64]", "[0,1000]") + "}", 1000);
        var ex = OpenExpectingError("model.embed_tokens.weight");
        Assert.Contains("has shape [512,64] of BF16 (65536 bytes) but its data_offsets span 1000 bytes", ex.Message);
    }

    [Fact]
    public void Open_SpanBeyondFile_ThrowsNamingFileAndTensor()
    {
        WriteHeader("{" + Entry("a", "U8", "[8]", "[0,8]") + "," + Entry("b", "U8", "[8]", "[8,16]") + "}", 12);
        Assert.Contains("beyond", OpenExpectingError("b").Message);
    }

    [Fact]
    public void Open_BeginAfterEnd_ThrowsNamingFileAndTensor()
    {
        WriteHeader("{" + Entry("a", "U8", "[0]", "[8,4]") + "}", 8);
        OpenExpectingError("a");
    }

    [Fact]
    public void Open_OverlappingSpans_ThrowsNamingBothTensors()
    {
        WriteHeader("{" + Entry("first", "U8", "[8]", "[0,8]") + "," + Entry("second", "U8", "[8]", "[4,12]") + "}", 12);
        var ex = OpenExpectingError("second");
        Assert.Contains("'first'", ex.Message);
        Assert.Contains("overlap", ex.Message);
    }

    [Fact]
    public void Open_EmptyTensorInsideAnotherSpan_IsNotAnOverlap()
    {
        WriteHeader("{" + Entry("w", "U8", "[8]", "[0,8]") + "," + Entry("e", "U8", "[0]", "[4,4]") + "}", 8);
        using var file = new SafetensorsFile(_dir.File(FileName));
        Assert.Equal(2, file.Tensors.Count);
    }

    [Fact]
    public void Open_DuplicateTensorName_ThrowsNamingTensor()
    {
        WriteHeader("{" + Entry("dup", "U8", "[4]", "[0,4]") + "," + Entry("dup", "U8", "[4]", "[4,8]") + "}", 8);
        Assert.Contains("twice", OpenExpectingError("dup").Message);
    }

    [Theory]
    [InlineData("{\"__metadata__\":{\"format\":1}}")]
    [InlineData("{\"__metadata__\":[\"pt\"]}")]
    public void Open_MetadataNotStringMap_ThrowsNamingFile(string json)
    {
        WriteHeader(json);
        Assert.Contains("__metadata__", OpenExpectingError().Message);
    }

    [Theory]
    [InlineData("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}")]
    [InlineData("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}")]
    [InlineData("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}")]
    [InlineData("{\"w\":[]}")]
    public void Open_MissingOrMalformedField_ThrowsNamingTensor(string json)
    {
        WriteHeader(json, 1);
        OpenExpectingError("w");
    }
}

using System.Text.Json;
using System.Text.Unicode;

namespace Fiddler.Kernels.IO;

/// <summary>
/// Parses and validates the JSON header of a safetensors file. Everything a later read relies on
/// (dtype, shape, offsets inside the data region, no overlaps) is checked here once, so the readers
/// can index raw memory without further bounds checks.
/// </summary>
internal static class SafetensorsHeader
{
    internal const string MetadataKey = "__metadata__";

    /// <summary>Parses <paramref name="json"/>; offsets in the result are absolute (<paramref name="dataStart"/> added).</summary>
    internal static Dictionary<string, TensorInfo> Parse(
        string path, ReadOnlyMemory<byte> json, long dataStart, long dataLength, out Dictionary<string, string> metadata)
    {
        // Validate UTF-8 up front: the JSON reader's behaviour on invalid bytes inside strings is not an error we control.
        if (!Utf8.IsValid(json.Span))
        {
            throw new SafetensorsFormatException(path, "header is not valid UTF-8");
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            throw new SafetensorsFormatException(path, $"header is not valid JSON ({ex.Message})", inner: ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new SafetensorsFormatException(path, $"header must be a JSON object but is {doc.RootElement.ValueKind}");
            }

            metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            foreach (JsonProperty prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == MetadataKey)
                {
                    ParseMetadata(path, prop.Value, metadata);
                    continue;
                }
                // JsonDocument keeps duplicate keys; two entries for one name would make lookups ambiguous.
                if (tensors.ContainsKey(prop.Name))
                {
                    throw new SafetensorsFormatException(path, $"tensor '{prop.Name}' appears twice in the header", prop.Name);
                }
                tensors.Add(prop.Name, ParseTensor(path, prop.Name, prop.Value, dataStart, dataLength));
            }

            CheckNoOverlap(path, tensors.Values, dataStart);
            return tensors;
        }
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafetensorsFormatException(path, $"'{MetadataKey}' must be an object of strings but is {value.ValueKind}");
        }
        foreach (JsonProperty entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new SafetensorsFormatException(path, $"'{MetadataKey}' entry '{entry.Name}' must be a string but is {entry.Value.ValueKind}");
            }
            metadata[entry.Name] = entry.Value.GetString()!;
        }
    }

    private static TensorInfo ParseTensor(string path, string name, JsonElement value, long dataStart, long dataLength)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Error(path, name, $"entry must be an object but is {value.ValueKind}");
        }

        if (!value.TryGetProperty("dtype", out JsonElement dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw Error(path, name, "has no string 'dtype'");
        }
        string dtypeText = dtypeElement.GetString()!;
        if (!SafetensorsDTypeExtensions.TryParseHeaderName(dtypeText, out SafetensorsDType dtype))
        {
            throw Error(path, name, $"has unsupported dtype '{dtypeText}' (supported: {string.Join(", ", Enum.GetNames<SafetensorsDType>())})");
        }

        long[] shape = ReadNonNegativeInts(path, name, value, "shape", expectedCount: null);
        long[] offsets = ReadNonNegativeInts(path, name, value, "data_offsets", expectedCount: 2);
        long begin = offsets[0], end = offsets[1];
        if (begin > end)
        {
            throw Error(path, name, $"has data_offsets [{begin},{end}] with begin after end");
        }
        if (end > dataLength)
        {
            throw Error(path, name, $"has data_offsets [{begin},{end}] beyond the {dataLength}-byte data region (file truncated?)");
        }

        long expected = dtype.ByteSize(shape);
        if (expected < 0)
        {
            throw Error(path, name, $"has shape {TensorInfo.FormatShape(shape)} whose byte size overflows");
        }
        if (expected != end - begin)
        {
            throw Error(path, name,
                $"has shape {TensorInfo.FormatShape(shape)} of {dtype} ({expected} bytes) but its data_offsets span {end - begin} bytes");
        }

        return new TensorInfo(name, dtype, shape, dataStart + begin, end - begin);
    }

    private static long[] ReadNonNegativeInts(string path, string name, JsonElement entry, string key, int? expectedCount)
    {
        if (!entry.TryGetProperty(key, out JsonElement array) || array.ValueKind != JsonValueKind.Array)
        {
            throw Error(path, name, $"has no array '{key}'");
        }
        int count = array.GetArrayLength();
        if (expectedCount is int n && count != n)
        {
            throw Error(path, name, $"'{key}' must have {n} elements but has {count}");
        }
        var result = new long[count];
        int i = 0;
        foreach (JsonElement item in array.EnumerateArray())
        {
            // TryGetInt64 rejects fractions, exponents and out-of-range values, which is what we want.
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long v) || v < 0)
            {
                throw Error(path, name, $"'{key}' element {i} is {item.GetRawText()}, not a non-negative integer");
            }
            result[i++] = v;
        }
        return result;
    }

    private static void CheckNoOverlap(string path, IEnumerable<TensorInfo> tensors, long dataStart)
    {
        // Empty tensors occupy no bytes, so they cannot overlap anything wherever their offsets point.
        TensorInfo? previous = null;
        foreach (TensorInfo t in tensors.Where(t => t.Length > 0).OrderBy(t => t.Offset))
        {
            if (previous is not null && t.Offset < previous.Offset + previous.Length)
            {
                throw new SafetensorsFormatException(path,
                    $"tensors '{previous.Name}' [{previous.Offset - dataStart},{previous.Offset - dataStart + previous.Length}) and " +
                    $"'{t.Name}' [{t.Offset - dataStart},{t.Offset - dataStart + t.Length}) overlap", t.Name);
            }
            previous = t;
        }
    }

    private static SafetensorsFormatException Error(string path, string name, string detail) =>
        new(path, $"tensor '{name}' {detail}", name);
}

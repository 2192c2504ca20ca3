using System.Buffers.Binary;
using System.Text.Json;

namespace Fiddler.Kernels.IO;

/// <summary>
/// Writes .safetensors files in the reference layout: 8-byte little-endian header length, a JSON header
/// padded with spaces to a multiple of 8 bytes (so the data region stays 8-aligned), then the tensor bytes
/// back to back in the order given.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/>. Each tensor's data length must equal its
    /// shape times its element size. The file is written to a temporary name and moved into place, so a
    /// crash never leaves a half-written file that looks valid.
    /// </summary>
    public static void Write(
        string path,
        IEnumerable<(string name, SafetensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        byte[] header = BuildHeader(list, metadata);

        string temp = path + ".tmp-" + Guid.NewGuid().ToString("N");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> prefix = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
                stream.Write(prefix);
                stream.Write(header);
                foreach (var t in list)
                {
                    stream.Write(t.data.Span);
                }
            }
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    private static byte[] BuildHeader(
        List<(string name, SafetensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data)> tensors,
        IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafetensorsHeader.MetadataKey);
                foreach (var (key, value) in metadata)
                {
                    json.WriteString(key, value);
                }
                json.WriteEndObject();
            }

            var seen = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (var (name, dtype, shape, data) in tensors)
            {
                Validate(name, dtype, shape, data, seen);
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype.ToHeaderName());
                json.WriteStartArray("shape");
                foreach (long dim in shape)
                {
                    json.WriteNumberValue(dim);
                }
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += data.Length;
            }
            json.WriteEndObject();
        }

        // Pad with spaces (valid trailing JSON whitespace) so the data region starts 8-byte aligned.
        int padded = (int)((buffer.Length + 7) / 8 * 8);
        while (buffer.Length < padded)
        {
            buffer.WriteByte((byte)' ');
        }
        return buffer.ToArray();
    }

    private static void Validate(string name, SafetensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data, HashSet<string> seen)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (name == SafetensorsHeader.MetadataKey)
        {
            throw new ArgumentException($"'{SafetensorsHeader.MetadataKey}' is reserved and cannot be a tensor name");
        }
        if (!seen.Add(name))
        {
            throw new ArgumentException($"tensor '{name}' is given twice");
        }
        long expected = dtype.ByteSize(shape);
        if (expected < 0)
        {
            throw new ArgumentException($"tensor '{name}' has invalid shape {TensorInfo.FormatShape(shape)}");
        }
        if (expected != data.Length)
        {
            throw new ArgumentException(
                $"tensor '{name}' has shape {TensorInfo.FormatShape(shape)} of {dtype} ({expected} bytes) but {data.Length} bytes of data");
        }
    }
}

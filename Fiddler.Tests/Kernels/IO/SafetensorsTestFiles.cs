using System.Buffers.Binary;
using System.Text;

namespace Fiddler.Tests.Kernels.IO;

/// <summary>A temporary directory deleted on dispose, so each test works in isolation.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "fiddler-st-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { /* best effort: a leaked temp dir must not fail the test */ }
    }
}

/// <summary>Builds raw (possibly corrupt) safetensors files byte by byte, bypassing the writer's validation.</summary>
internal static class RawSafetensors
{
    /// <summary>Writes an 8-byte length prefix, the header text as UTF-8, then <paramref name="data"/>.</summary>
    public static string Write(string path, string headerJson, byte[]? data = null, ulong? declaredHeaderLength = null)
    {
        byte[] header = Encoding.UTF8.GetBytes(headerJson);
        var bytes = new byte[8 + header.Length + (data?.Length ?? 0)];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredHeaderLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data?.CopyTo(bytes, 8 + header.Length);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Deterministic non-trivial test data.</summary>
    public static byte[] Pattern(int length, int seed = 1)
    {
        var bytes = new byte[length];
        for (int i = 0; i < length; i++)
        {
            bytes[i] = (byte)(i * 31 + seed * 7);
        }
        return bytes;
    }
}

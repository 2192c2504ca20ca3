namespace Fiddler.Kernels.IO;

/// <summary>
/// A safetensors file, or a checkpoint index, is malformed or inconsistent. The message always starts with
/// the offending file's path and names the tensor involved where there is one, so a bad shard among dozens
/// can be found from the log line alone. (Not an InvalidDataException subclass: that type is sealed.)
/// </summary>
public sealed class SafetensorsFormatException : Exception
{
    /// <summary>Creates the exception; the message becomes "<paramref name="filePath"/>: <paramref name="detail"/>".</summary>
    public SafetensorsFormatException(string filePath, string detail, string? tensorName = null, Exception? inner = null)
        : base($"{filePath}: {detail}", inner)
    {
        FilePath = filePath;
        TensorName = tensorName;
    }

    /// <summary>The file (shard, or index json) that is at fault.</summary>
    public string FilePath { get; }

    /// <summary>The tensor the problem concerns, if any.</summary>
    public string? TensorName { get; }
}

/// <summary>
/// A tensor was looked up by name in a file or checkpoint that does not contain it. Derives from
/// <see cref="KeyNotFoundException"/> so generic dictionary-style handlers still catch it.
/// </summary>
public sealed class SafetensorsTensorNotFoundException : KeyNotFoundException
{
    /// <summary>Creates the exception for <paramref name="tensorName"/> missing from <paramref name="source"/>.</summary>
    public SafetensorsTensorNotFoundException(string source, string tensorName)
        : base($"{source}: no tensor named '{tensorName}'")
    {
        SourcePath = source;
        TensorName = tensorName;
    }

    /// <summary>The file or checkpoint directory that was searched.</summary>
    public string SourcePath { get; }

    /// <summary>The tensor name that was not found.</summary>
    public string TensorName { get; }
}

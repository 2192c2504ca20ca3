using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using Microsoft.Win32.SafeHandles;

namespace Fiddler.Kernels.IO;

/// <summary>
/// One .safetensors file, memory-mapped read-only. The header is parsed and fully validated in the constructor,
/// so every <see cref="TensorInfo"/> exposed is known to lie inside the file. Tensor bytes are never copied
/// unless asked for: access goes through a pointer into the mapping, acquired once and released on dispose.
/// Offsets are 64-bit throughout so files (and tensors) larger than 2 GB work.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted, as in the reference implementation; guards against absurd allocations.</summary>
    public const long MaxHeaderLength = 100_000_000;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly Dictionary<string, TensorInfo> _tensors;
    private byte* _base;
    private bool _pointerAcquired;

    /// <summary>Opens and validates <paramref name="path"/>. Throws <see cref="SafetensorsFormatException"/> on any format error.</summary>
    public SafetensorsFile(string path)
    {
        Path = path;
        SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            FileLength = RandomAccess.GetLength(handle);
            HeaderLength = ReadHeaderLength(handle, path, FileLength);
            DataOffset = 8 + HeaderLength;

            // Read the header with plain I/O: it is parsed once, and this keeps the mapping out of the error paths.
            var header = new byte[HeaderLength];
            if (RandomAccess.Read(handle, header, 8) != header.Length)
            {
                throw new SafetensorsFormatException(path, "file shrank while reading the header");
            }
            _tensors = SafetensorsHeader.Parse(path, header, DataOffset, FileLength - DataOffset, out Dictionary<string, string> metadata);
            Metadata = metadata;

            // leaveOpen: false makes the mapping own the handle from here on; Dispose of the map closes it.
            _map = MemoryMappedFile.CreateFromFile(handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _base);
            _pointerAcquired = true;
            // The view may start before offset 0 for page alignment; PointerOffset corrects for that.
            _base += _view.PointerOffset;
        }
        catch
        {
            if (_map is null)
            {
                handle.Dispose();
            }
            Dispose();
            throw;
        }
    }

    private static long ReadHeaderLength(SafeFileHandle handle, string path, long fileLength)
    {
        Span<byte> prefix = stackalloc byte[8];
        if (fileLength < 8 || RandomAccess.Read(handle, prefix, 0) != 8)
        {
            throw new SafetensorsFormatException(path, $"file is {fileLength} bytes, too short for the 8-byte header length");
        }
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        // Cap first: a huge value is a corrupt or hostile file, whatever the file size.
        if (headerLength > MaxHeaderLength)
        {
            throw new SafetensorsFormatException(path, $"header length {headerLength} exceeds the {MaxHeaderLength}-byte cap");
        }
        if ((long)headerLength > fileLength - 8)
        {
            throw new SafetensorsFormatException(path, $"header length {headerLength} runs past the end of the {fileLength}-byte file");
        }
        return (long)headerLength;
    }

    /// <summary>The path this file was opened from.</summary>
    public string Path { get; }

    /// <summary>Total file size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Size of the JSON header (including padding), excluding the 8-byte length prefix.</summary>
    public long HeaderLength { get; }

    /// <summary>Absolute offset of the data region (8 + <see cref="HeaderLength"/>).</summary>
    public long DataOffset { get; }

    /// <summary>Tensors by name, validated.</summary>
    public IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    /// <summary>The free-form string metadata from the header's "__metadata__" entry (empty if absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>True if the file has a tensor called <paramref name="name"/>.</summary>
    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The entry for <paramref name="name"/>; throws <see cref="SafetensorsTensorNotFoundException"/> if absent.</summary>
    public TensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out TensorInfo? info) ? info : throw new SafetensorsTensorNotFoundException(Path, name);

    /// <summary>
    /// Pointer to the first byte of the tensor's data inside the mapping. Valid until this object is disposed;
    /// read-only memory: writing through it faults.
    /// </summary>
    public byte* GetPointer(string name) => Base + Info(name).Offset;

    /// <summary>
    /// The tensor's bytes as a span over the mapping (no copy). Tensors over 2 GB cannot be a span;
    /// use <see cref="GetPointer"/> or <see cref="CopyTo(string, void*, long)"/> for those.
    /// </summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        TensorInfo info = Info(name);
        if (info.Length > int.MaxValue)
        {
            throw new InvalidOperationException($"{Path}: tensor '{name}' is {info.Length} bytes, too large for a span; use GetPointer");
        }
        return new ReadOnlySpan<byte>(Base + info.Offset, (int)info.Length);
    }

    /// <summary>Copies the tensor's bytes into the start of <paramref name="destination"/>, which must be large enough.</summary>
    public void CopyTo(string name, Span<byte> destination)
    {
        fixed (byte* dest = destination)
        {
            CopyTo(name, dest, destination.Length);
        }
    }

    /// <summary>Copies the tensor's bytes to native memory (e.g. a tensor's storage); works above 2 GB.</summary>
    public void CopyTo(string name, void* destination, long destinationCapacity)
    {
        TensorInfo info = Info(name);
        if (destinationCapacity < info.Length)
        {
            throw new ArgumentException(
                $"{Path}: tensor '{name}' is {info.Length} bytes but the destination holds only {destinationCapacity}", nameof(destinationCapacity));
        }
        // Buffer.MemoryCopy takes 64-bit lengths, so no chunking is needed for huge tensors.
        Buffer.MemoryCopy(Base + info.Offset, destination, destinationCapacity, info.Length);
    }

    /// <summary>Releases the pointer and unmaps the file. Pointers and spans obtained earlier become invalid.</summary>
    public void Dispose()
    {
        if (_pointerAcquired)
        {
            _view!.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointerAcquired = false;
            _base = null;
        }
        _view?.Dispose();
        _map?.Dispose();
    }

    private byte* Base => _pointerAcquired ? _base : throw new ObjectDisposedException(Path);
}

namespace Fiddler.Kernels.IO;

/// <summary>
/// A model directory of one or more .safetensors shards, addressed by tensor name. Resolution order:
/// <c>model.safetensors.index.json</c> (Hugging Face sharded layout), else <c>model.safetensors</c>, else every
/// <c>*.safetensors</c> in the directory. Each shard is opened (and validated) once; a tensor name must live in
/// exactly one shard, and every tensor the index names must be in the shard it names.
/// </summary>
public sealed unsafe class SafetensorsCheckpoint : IDisposable
{
    /// <summary>File name of the Hugging Face shard index.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>File name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    private readonly List<SafetensorsFile> _files = new();
    private readonly Dictionary<string, SafetensorsFile> _owner = new(StringComparer.Ordinal);

    /// <summary>Opens the checkpoint in <paramref name="directory"/>.</summary>
    public SafetensorsCheckpoint(string directory)
    {
        Directory = System.IO.Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(Directory))
        {
            throw new DirectoryNotFoundException($"checkpoint directory {Directory} does not exist");
        }
        try
        {
            string indexPath = System.IO.Path.Combine(Directory, IndexFileName);
            string singlePath = System.IO.Path.Combine(Directory, SingleFileName);
            if (File.Exists(indexPath))
            {
                IndexPath = indexPath;
                OpenFromIndex(indexPath);
            }
            else if (File.Exists(singlePath))
            {
                OpenFiles([singlePath]);
            }
            else
            {
                string[] all = System.IO.Directory.GetFiles(Directory, "*.safetensors");
                if (all.Length == 0)
                {
                    throw new FileNotFoundException($"no {SingleFileName} or {IndexFileName} (nor any *.safetensors file) in {Directory}");
                }
                // Ordinal sort makes the open order, and thus which file a duplicate error blames, deterministic.
                Array.Sort(all, StringComparer.Ordinal);
                OpenFiles(all);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Absolute path of the checkpoint directory.</summary>
    public string Directory { get; }

    /// <summary>Path of the index json if the checkpoint was opened through one, else null.</summary>
    public string? IndexPath { get; }

    /// <summary>The opened shards, in open order.</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>All tensor names across all shards.</summary>
    public IEnumerable<string> Names => _owner.Keys;

    /// <summary>Number of tensors across all shards.</summary>
    public int Count => _owner.Count;

    /// <summary>True if some shard holds <paramref name="name"/>.</summary>
    public bool Contains(string name) => _owner.ContainsKey(name);

    /// <summary>The shard holding <paramref name="name"/>; throws <see cref="SafetensorsTensorNotFoundException"/> if none.</summary>
    public SafetensorsFile FileOf(string name) =>
        _owner.TryGetValue(name, out SafetensorsFile? file) ? file : throw new SafetensorsTensorNotFoundException(Directory, name);

    /// <summary>The entry for <paramref name="name"/> (offsets are within its shard, see <see cref="FileOf"/>).</summary>
    public TensorInfo Info(string name) => FileOf(name).Tensors[name];

    /// <summary>The tensor's bytes over the mapping (no copy); at most 2 GB, see <see cref="SafetensorsFile.GetBytes"/>.</summary>
    public ReadOnlySpan<byte> GetBytes(string name) => FileOf(name).GetBytes(name);

    /// <summary>Pointer to the tensor's bytes in its shard's mapping; valid until this checkpoint is disposed.</summary>
    public byte* GetPointer(string name) => FileOf(name).GetPointer(name);

    /// <summary>Copies the tensor's bytes into <paramref name="destination"/>.</summary>
    public void CopyTo(string name, Span<byte> destination) => FileOf(name).CopyTo(name, destination);

    /// <summary>Copies the tensor's bytes to native memory; works above 2 GB.</summary>
    public void CopyTo(string name, void* destination, long destinationCapacity) =>
        FileOf(name).CopyTo(name, destination, destinationCapacity);

    /// <summary>Unmaps every shard.</summary>
    public void Dispose()
    {
        foreach (SafetensorsFile file in _files)
        {
            file.Dispose();
        }
        _files.Clear();
        _owner.Clear();
    }

    private void OpenFromIndex(string indexPath)
    {
        IReadOnlyDictionary<string, string> weightMap = SafetensorsIndex.ReadWeightMap(indexPath);

        // Resolve and check every shard before mapping any, so a missing file is reported without wasted work.
        var shardPaths = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (tensor, shard) in weightMap)
        {
            if (!shardPaths.ContainsKey(shard))
            {
                shardPaths[shard] = SafetensorsIndex.ResolveShard(indexPath, Directory, shard, tensor);
            }
        }
        OpenFiles(shardPaths.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal));

        foreach (var (tensor, shard) in weightMap)
        {
            SafetensorsFile? actual = _owner.GetValueOrDefault(tensor);
            if (actual is null || actual.Path != shardPaths[shard])
            {
                string where = actual is null ? "no shard has it" : $"it is in {System.IO.Path.GetFileName(actual.Path)}";
                throw new SafetensorsFormatException(indexPath,
                    $"weight_map puts tensor '{tensor}' in {shard}, but {shard} has no such tensor ({where})", tensor);
            }
        }
        // Tensors present in a shard but absent from the index are still served: the shard headers are authoritative
        // about what exists, and the index was only checked for consistency with them.
    }

    private void OpenFiles(IEnumerable<string> paths)
    {
        foreach (string path in paths)
        {
            var file = new SafetensorsFile(path);
            _files.Add(file);
            foreach (string name in file.Tensors.Keys)
            {
                if (_owner.TryGetValue(name, out SafetensorsFile? other))
                {
                    throw new SafetensorsFormatException(path,
                        $"tensor '{name}' is also in {other.Path}; a tensor must live in exactly one shard", name);
                }
                _owner.Add(name, file);
            }
        }
    }
}

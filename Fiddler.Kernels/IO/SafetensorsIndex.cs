using System.Text.Json;

namespace Fiddler.Kernels.IO;

/// <summary>
/// Reads a Hugging Face <c>model.safetensors.index.json</c>: an object whose "weight_map" maps tensor names to
/// shard file names. Other keys (e.g. "metadata.total_size") are informational and ignored.
/// </summary>
internal static class SafetensorsIndex
{
    /// <summary>Parses the weight map, rejecting anything that is not a tensor→file-name object of strings.</summary>
    internal static IReadOnlyDictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException ex)
        {
            throw new SafetensorsFormatException(indexPath, $"index is not valid JSON ({ex.Message})", inner: ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out JsonElement map)
                || map.ValueKind != JsonValueKind.Object)
            {
                throw new SafetensorsFormatException(indexPath, "index has no 'weight_map' object");
            }

            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                {
                    throw new SafetensorsFormatException(indexPath,
                        $"weight_map entry for tensor '{entry.Name}' must be a file name string but is {entry.Value.ValueKind}", entry.Name);
                }
                string shard = entry.Value.GetString()!;
                // A duplicate key that agrees is harmless; one that disagrees would place a tensor in two shards.
                if (result.TryGetValue(entry.Name, out string? previous) && previous != shard)
                {
                    throw new SafetensorsFormatException(indexPath,
                        $"weight_map puts tensor '{entry.Name}' in both {previous} and {shard}", entry.Name);
                }
                result[entry.Name] = shard;
            }
            return result;
        }
    }

    /// <summary>
    /// Absolute path of <paramref name="shard"/>; it must be a file inside the checkpoint directory (an index is
    /// data, and must not be able to point the loader at arbitrary files) and must exist.
    /// </summary>
    internal static string ResolveShard(string indexPath, string directory, string shard, string exampleTensor)
    {
        string full = Path.GetFullPath(Path.Combine(directory, shard));
        string root = Path.TrimEndingDirectorySeparator(directory) + Path.DirectorySeparatorChar;
        if (Path.IsPathRooted(shard) || !full.StartsWith(root, StringComparison.Ordinal))
        {
            throw new SafetensorsFormatException(indexPath,
                $"weight_map names shard '{shard}' (for tensor '{exampleTensor}') outside the checkpoint directory", exampleTensor);
        }
        if (!File.Exists(full))
        {
            throw new SafetensorsFormatException(indexPath,
                $"weight_map names shard file '{shard}' (for tensor '{exampleTensor}'), which does not exist in {directory}", exampleTensor);
        }
        return full;
    }
}

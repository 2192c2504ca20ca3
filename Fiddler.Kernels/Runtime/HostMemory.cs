namespace Fiddler.Kernels.Runtime;

/// <summary>How much memory this host can still give the process: what a host-side allocation is checked against.</summary>
public static class HostMemory
{
    /// <summary>
    /// MemAvailable of /proc/meminfo where it can be read (Linux: free memory plus what the kernel can reclaim, e.g. the
    /// page cache), else the GC's view of the memory this process may use; null when neither is known.
    /// </summary>
    public static long? AvailableBytes()
    {
        if (KiBField("/proc/meminfo", "MemAvailable:") is long available) return available;
        long total = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return total > 0 ? total : null;
    }

    /// <summary>The bytes of a "Name:   N kB" line of a /proc file (e.g. /proc/meminfo's MemAvailable), or null where the
    /// file or the line cannot be read.</summary>
    internal static long? KiBField(string path, string name)
    {
        try
        {
            foreach (string line in File.ReadLines(path))
                if (line.StartsWith(name, StringComparison.Ordinal) && long.TryParse(line[name.Length..].Trim().Split(' ')[0], out long kb))
                    return kb * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}

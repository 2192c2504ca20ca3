using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// Transparent huge pages for the host experts. The CPU expert kernel streams hundreds of MB per layer; on 4 KiB pages
/// every 4 KiB is a TLB miss and a stop for the hardware prefetcher. Whether a plain allocation gets 2 MiB pages
/// depends on how fragmented host memory is when it is first touched (on the H100 host the same build read 113 GB/s
/// on a fresh machine and 87 GB/s a minute later, after a run had freed 70 GB). MADV_HUGEPAGE asks the kernel to
/// compact memory for huge pages at first touch (the default "madvise" defrag policy), so it must come before the
/// memory is touched or page-locked.
/// </summary>
public static partial class HugePages
{
    private const int MadvHugepage = 14;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    /// <summary>False when the environment sets FIDDLER_HOST_HUGE_PAGES=0 (for A/B runs).</summary>
    public static bool Enabled { get; } = Environment.GetEnvironmentVariable("FIDDLER_HOST_HUGE_PAGES") != "0";

    /// <summary>Advises huge pages for the pages spanning [p, p + bytes). False where unsupported or refused.</summary>
    public static bool Advise(nint p, long bytes)
    {
        if (!Enabled || !OperatingSystem.IsLinux() || p == 0 || bytes <= 0) return false;
        long page = Environment.SystemPageSize;
        long start = p & ~(page - 1), end = (p + bytes + page - 1) & ~(page - 1);
        try { return madvise((nint)start, (nuint)(end - start), MadvHugepage) == 0; }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }
    }

    /// <summary>This process's anonymous memory in huge pages (AnonHugePages of /proc/self/smaps_rollup), or null.</summary>
    public static long? ProcessHugeBytes()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/smaps_rollup"))
                if (line.StartsWith("AnonHugePages:", StringComparison.Ordinal)
                    && long.TryParse(line["AnonHugePages:".Length..].Trim().Split(' ')[0], out long kb))
                    return kb * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}

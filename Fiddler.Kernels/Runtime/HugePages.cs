using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// Transparent huge pages for large host tensors, and how much of this process's anonymous memory sits in them
/// (reported by <c>fiddler bench</c>). On a host whose THP policy is "madvise" (the H100 host), host experts otherwise
/// sit on 4 KiB pages: streaming one expert walks ~86,000 pages, and in a virtual machine each TLB miss is a
/// two-dimensional page walk. <see cref="AdviseHostTensors"/> (<c>FIDDLER_HUGE_PAGES=1</c>) asks for 2 MiB pages before
/// the host experts are first touched. Off by default: in session 4 it measured no better (24 GiB decode 6.94 / 6.45
/// tok/s without, 6.59 / 6.19 with, one call whose runs drifted down in that order).
/// </summary>
public static partial class HugePages
{
    private const int MadvHugepage = 14;
    private const string Variable = "FIDDLER_HUGE_PAGES";
    private static bool s_advise = Environment.GetEnvironmentVariable(Variable)?.Trim() == "1";

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    /// <summary>Whether large host tensors (<see cref="Cuda.HostPinning"/>) are advised into huge pages before first touch.</summary>
    public static bool AdviseHostTensors
    {
        get => Volatile.Read(ref s_advise);
        set => Volatile.Write(ref s_advise, value);
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming <c>FIDDLER_HUGE_PAGES</c> when it is set to other than 0 or 1.</summary>
    public static void CheckEnvironment()
    {
        string? text = Environment.GetEnvironmentVariable(Variable);
        if (!string.IsNullOrWhiteSpace(text) && text.Trim() is not ("0" or "1")) throw new ArgumentException($"{Variable}={text} is not 0 or 1");
    }

    /// <summary>
    /// Advises huge pages (MADV_HUGEPAGE) for the whole 2 MiB pages inside [p, p + bytes); with THP "madvise" the
    /// kernel then backs them with huge pages at first touch. Must come before the memory is touched or page-locked.
    /// False where unsupported or refused.
    /// </summary>
    public static bool Advise(nint p, long bytes)
    {
        if (!OperatingSystem.IsLinux() || p == 0 || bytes <= 0) return false;
        const long huge = 2L << 20;
        long start = (p + huge - 1) & ~(huge - 1), end = (p + bytes) & ~(huge - 1);
        if (end <= start) return false;
        try { return madvise((nint)start, (nuint)(end - start), MadvHugepage) == 0; }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }
    }

    /// <summary>AnonHugePages of /proc/self/smaps_rollup in bytes, or null where it cannot be read.</summary>
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

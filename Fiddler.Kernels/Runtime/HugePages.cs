using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Runtime;

/// <summary>Which host experts <see cref="HugePages"/> advises into 2 MiB pages (<c>FIDDLER_HUGE_PAGES</c>: 0, 1, even).</summary>
public enum HugePagePolicy
{
    /// <summary>None (the default): 4 KiB pages where the host's THP policy is "madvise".</summary>
    Off,
    /// <summary>Every host expert.</summary>
    All,
    /// <summary>Those of even layers only: the same run then reads both kinds, layer after layer, for an in-process
    /// comparison (<c>fiddler bench</c> reports the kernel's rate on each).</summary>
    EvenLayers,
}

/// <summary>
/// Transparent huge pages for large host tensors, and how much of this process's anonymous memory sits in them
/// (reported by <c>fiddler bench</c>). On a host whose THP policy is "madvise" (the H100 host), host experts otherwise
/// sit on 4 KiB pages: streaming one expert walks ~86,000 pages, and in a virtual machine each TLB miss is a
/// two-dimensional page walk. <see cref="Policy"/> (<c>FIDDLER_HUGE_PAGES</c>) asks for 2 MiB pages before the host
/// experts are first touched. Off by default: in session 16 three of four alternating whole-run pairs were faster with
/// them (+6.2, +2.0, +14.5, −3.4 %) and the standalone kernel was not; <c>even</c> compares both in one run.
/// </summary>
public static partial class HugePages
{
    private const int MadvHugepage = 14;
    private const string Variable = "FIDDLER_HUGE_PAGES";
    private static int s_policy = (int)(ParsePolicy(Environment.GetEnvironmentVariable(Variable)) ?? HugePagePolicy.Off);
    private static readonly List<(nint Start, nint End)> s_advised = []; // sorted by Start; guarded by itself
    private static volatile bool s_anyAdvised;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    /// <summary>Which host experts are advised into huge pages before first touch (set it before the model is built).</summary>
    public static HugePagePolicy Policy
    {
        get => (HugePagePolicy)Volatile.Read(ref s_policy);
        set => Volatile.Write(ref s_policy, Enum.IsDefined(value) ? (int)value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "unknown huge-page policy"));
    }

    /// <summary>Whether the host experts of <paramref name="layer"/> go into huge pages under <see cref="Policy"/>.</summary>
    public static bool ForLayer(int layer) => Policy switch
    {
        HugePagePolicy.All => true,
        HugePagePolicy.EvenLayers => layer % 2 == 0,
        _ => false,
    };

    /// <summary>"0", "1" or "even" (any case, trimmed) as a policy; null for anything else.</summary>
    public static HugePagePolicy? ParsePolicy(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "0" => HugePagePolicy.Off,
        "1" => HugePagePolicy.All,
        "even" => HugePagePolicy.EvenLayers,
        _ => null,
    };

    /// <summary>Throws <see cref="ArgumentException"/> naming <c>FIDDLER_HUGE_PAGES</c> when it is set to other than 0, 1 or even.</summary>
    public static void CheckEnvironment()
    {
        string? text = Environment.GetEnvironmentVariable(Variable);
        if (ParsePolicy(text) is null) throw new ArgumentException($"{Variable}={text} is not 0, 1 or even");
    }

    /// <summary>Whether any range was advised (and not forgotten) in this process: the kernel's per-page-size statistics
    /// look ranges up only then.</summary>
    public static bool AnyAdvised => s_anyAdvised;

    /// <summary>Whether <paramref name="p"/> lies in a range <see cref="Advise"/> accepted (and <see cref="Forget"/> did not drop).</summary>
    public static bool IsAdvised(nint p)
    {
        if (!s_anyAdvised) return false;
        lock (s_advised)
        {
            int lo = 0, hi = s_advised.Count - 1;
            while (lo <= hi)
            {
                int mid = (lo + hi) >>> 1;
                var (start, end) = s_advised[mid];
                if (p < start) hi = mid - 1;
                else if (p >= end) lo = mid + 1;
                else return true;
            }
            return false;
        }
    }

    /// <summary>Drops the advised ranges that start in [p, p + bytes) (their memory is being freed).</summary>
    public static void Forget(nint p, long bytes)
    {
        lock (s_advised)
        {
            s_advised.RemoveAll(r => r.Start >= p && r.Start < p + (nint)bytes);
            s_anyAdvised = s_advised.Count > 0;
        }
    }

    /// <summary>
    /// Advises huge pages (MADV_HUGEPAGE) for the whole 2 MiB pages inside [p, p + bytes); with THP "madvise" the
    /// kernel then backs them with huge pages at first touch. Must come before the memory is touched or page-locked.
    /// False where unsupported or refused. On success the whole [p, p + bytes) counts as advised for
    /// <see cref="IsAdvised"/> (a large tensor starts a little past a 2 MiB boundary: its first bytes are on a small page).
    /// </summary>
    public static bool Advise(nint p, long bytes)
    {
        if (!OperatingSystem.IsLinux() || p == 0 || bytes <= 0) return false;
        const long huge = 2L << 20;
        long start = (p + huge - 1) & ~(huge - 1), end = (p + bytes) & ~(huge - 1);
        if (end <= start) return false;
        try
        {
            if (madvise((nint)start, (nuint)(end - start), MadvHugepage) != 0) return false;
        }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }
        lock (s_advised)
        {
            s_advised.RemoveAll(r => r.Start < p + (nint)bytes && r.End > p); // a stale range this memory now reuses
            int at = s_advised.FindIndex(r => r.Start > p);
            s_advised.Insert(at < 0 ? s_advised.Count : at, (p, p + (nint)bytes));
            s_anyAdvised = true;
        }
        return true;
    }

    /// <summary>AnonHugePages of /proc/self/smaps_rollup in bytes, or null where it cannot be read.</summary>
    public static long? ProcessHugeBytes() => HostMemory.KiBField("/proc/self/smaps_rollup", "AnonHugePages:");
}

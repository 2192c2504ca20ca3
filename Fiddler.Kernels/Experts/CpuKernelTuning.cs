namespace Fiddler.Kernels.Experts;

/// <summary>
/// Two knobs of <see cref="CpuExpertKernel"/>, process-wide: how far ahead along each weight row the kernel prefetches,
/// and how many weight bytes one work item covers. The defaults were tuned with the kernel alone on the H100 host; the
/// engine runs it beside PCIe copies that read the same DRAM, which <c>fiddler bench-cpu-expert --with-copies</c> sweeps.
/// Read once per row block and per call, so set them between calls (tests, benchmarks), not while a kernel runs.
/// <c>FIDDLER_KERNEL_PREFETCH_BYTES</c> and <c>FIDDLER_KERNEL_ITEM_KB</c> set them at start-up (an A/B of whole runs).
/// </summary>
public static class CpuKernelTuning
{
    public const int DefaultPrefetchBytes = 1024;
    public const int DefaultItemBytes = 128 * 1024;

    private const string PrefetchVariable = "FIDDLER_KERNEL_PREFETCH_BYTES", ItemVariable = "FIDDLER_KERNEL_ITEM_KB";
    private static int s_prefetchBytes = FromEnvironment(PrefetchVariable, DefaultPrefetchBytes, 1, ValidPrefetch, out _);
    private static int s_itemBytes = FromEnvironment(ItemVariable, DefaultItemBytes, 1024, ValidItem, out _);

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the variable when <c>FIDDLER_KERNEL_PREFETCH_BYTES</c> or
    /// <c>FIDDLER_KERNEL_ITEM_KB</c> is set out of range (the CLI calls it first; otherwise such a value is ignored and the
    /// default kept).
    /// </summary>
    public static void CheckEnvironment()
    {
        FromEnvironment(PrefetchVariable, DefaultPrefetchBytes, 1, ValidPrefetch, out string? e1);
        FromEnvironment(ItemVariable, DefaultItemBytes, 1024, ValidItem, out string? e2);
        if ((e1 ?? e2) is { } error) throw new ArgumentException(error);
    }

    /// <summary>Bytes ahead of the current position each weight row is prefetched (0: no software prefetch); a multiple of
    /// 64 in 0..16384. On the H100 host, alone, 1 KB gave 113-126 GB/s for one token against 102-118 GB/s without.</summary>
    public static int PrefetchBytes
    {
        get => Volatile.Read(ref s_prefetchBytes);
        set => Volatile.Write(ref s_prefetchBytes, ValidPrefetch(value) ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "prefetch distance must be a multiple of 64 in 0..16384 bytes"));
    }

    /// <summary>Weight bytes per work item (16 KiB..4 MiB): small enough that a phase's last items end together, large
    /// enough that each thread streams long runs.</summary>
    public static int ItemBytes
    {
        get => Volatile.Read(ref s_itemBytes);
        set => Volatile.Write(ref s_itemBytes, ValidItem(value) ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "work item size must be in 16 KiB..4 MiB"));
    }

    /// <summary>Whether <paramref name="v"/> is a prefetch distance <see cref="PrefetchBytes"/> takes.</summary>
    public static bool ValidPrefetch(int v) => v is >= 0 and <= 16384 && v % 64 == 0;

    /// <summary>Whether <paramref name="v"/> is a work-item size <see cref="ItemBytes"/> takes.</summary>
    public static bool ValidItem(int v) => v is >= 16 * 1024 and <= 4 * 1024 * 1024;

    /// <summary>The variable's value times <paramref name="unit"/> when set and valid; else <paramref name="fallback"/>, with
    /// <paramref name="error"/> saying why when it was set.</summary>
    private static int FromEnvironment(string name, int fallback, int unit, Func<int, bool> valid, out string? error)
    {
        error = null;
        string? text = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrWhiteSpace(text)) return fallback;
        if (int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int v)
            && (long)v * unit is var scaled && scaled is >= 0 and <= int.MaxValue && valid((int)scaled))
            return (int)scaled;
        error = $"{name}={text} is out of range ({(unit == 1 ? "a multiple of 64 in 0..16384 bytes" : "16..4096 KB")})";
        return fallback;
    }
}

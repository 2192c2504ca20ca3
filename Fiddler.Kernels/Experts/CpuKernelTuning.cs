namespace Fiddler.Kernels.Experts;

/// <summary>Where the kernel's software prefetch along each weight row puts a line (x86 PREFETCHT0/T1/T2/NTA).</summary>
public enum PrefetchLevel
{
    L1,
    L2,
    L3,
    NonTemporal,
}

/// <summary>
/// Six knobs of <see cref="CpuExpertKernel"/>, process-wide: how far ahead along each weight row the kernel prefetches
/// and into which cache level, whether it also prefetches the next row group, how many weight bytes one work item
/// covers, which rows an item reads side by side, and how small the items at a phase's end are. The first four were tuned with the kernel alone on the H100 host,
/// the item size and row order in the engine; the engine runs the kernel beside PCIe copies that read the same DRAM,
/// which <c>fiddler bench-cpu-expert --with-copies</c> sweeps. Read once per row block and per call,
/// so set them between calls (tests, benchmarks), not while a kernel runs. <c>FIDDLER_KERNEL_PREFETCH_BYTES</c>,
/// <c>FIDDLER_KERNEL_PREFETCH_LEVEL</c> (l1, l2, l3, nta), <c>FIDDLER_KERNEL_NEXT_ROWS</c> (0, 1),
/// <c>FIDDLER_KERNEL_ITEM_KB</c>, <c>FIDDLER_KERNEL_SPREAD_ROWS</c> (0, 1) and <c>FIDDLER_KERNEL_TAIL_KB</c> (0: off) set them
/// at start-up (an A/B of whole runs).
/// </summary>
public static class CpuKernelTuning
{
    public const int DefaultPrefetchBytes = 1024;
    // Item size and spread rows (BENCHMARKS.md, session 15): in-process pairs of decode windows at 24 GiB on the H100 host,
    // 512 KB items with spread rows against 128 KB adjacent: +3.98 % median (6 pairs, the kernel faster in all six);
    // 128 KB spread: +2.41 %. Walking one row at a time instead lost 3.7-6.2 %.
    public const int DefaultItemBytes = 512 * 1024;
    // Level and next rows (BENCHMARKS.md, session 12): on two H100 hosts, in-process pairs of decode windows at 24 GiB
    // compared L3 + next rows with these defaults: +2.1 % median (6 pairs) on one, −5.1 % (8 pairs) on the other;
    // beside copies alone, within ±5 % of them either way. No setting won, so the defaults stay as tuned before.
    public const PrefetchLevel DefaultPrefetchLevel = PrefetchLevel.L1;
    public const bool DefaultNextRowsPrefetch = false;
    public const bool DefaultSpreadRows = true;
    // Tail items (session 16): with 512 KB items a phase's last item takes 60-84 µs to finish after it is handed out on the
    // H100 host (20-30 µs with 128 KB items). 128 KB tail items lost on two H100 hosts, in-process pairs of decode windows
    // at 24 GiB: off against on +1.84 % and +3.69 % median (6 pairs each; the kernel faster off in 5 and 4 of 6). The
    // threads still reading take the bandwidth the idle ones leave, so the tail costs less than it seems. Off.
    public const int DefaultTailItemBytes = 0;

    private const string PrefetchVariable = "FIDDLER_KERNEL_PREFETCH_BYTES", ItemVariable = "FIDDLER_KERNEL_ITEM_KB",
        LevelVariable = "FIDDLER_KERNEL_PREFETCH_LEVEL", NextRowsVariable = "FIDDLER_KERNEL_NEXT_ROWS",
        SpreadVariable = "FIDDLER_KERNEL_SPREAD_ROWS", TailVariable = "FIDDLER_KERNEL_TAIL_KB";
    private static int s_prefetchBytes = FromEnvironment(PrefetchVariable, DefaultPrefetchBytes, 1, ValidPrefetch, out _);
    private static int s_itemBytes = FromEnvironment(ItemVariable, DefaultItemBytes, 1024, ValidItem, out _);
    private static int s_level = (int)(ParseLevel(Environment.GetEnvironmentVariable(LevelVariable)) ?? DefaultPrefetchLevel);
    private static bool s_nextRows = ParseSwitch(Environment.GetEnvironmentVariable(NextRowsVariable)) ?? DefaultNextRowsPrefetch;
    private static bool s_spread = ParseSwitch(Environment.GetEnvironmentVariable(SpreadVariable)) ?? DefaultSpreadRows;
    private static int s_tailBytes = FromEnvironment(TailVariable, DefaultTailItemBytes, 1024, ValidTail, out _);

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the variable when one of the <c>FIDDLER_KERNEL_*</c> variables is set
    /// to a value it does not take (the CLI calls it first; otherwise such a value is ignored and the default kept).
    /// </summary>
    public static void CheckEnvironment()
    {
        FromEnvironment(PrefetchVariable, DefaultPrefetchBytes, 1, ValidPrefetch, out string? e1);
        FromEnvironment(ItemVariable, DefaultItemBytes, 1024, ValidItem, out string? e2);
        FromEnvironment(TailVariable, DefaultTailItemBytes, 1024, ValidTail, out string? e6);
        string? level = Environment.GetEnvironmentVariable(LevelVariable), next = Environment.GetEnvironmentVariable(NextRowsVariable),
            spread = Environment.GetEnvironmentVariable(SpreadVariable);
        string? e3 = !string.IsNullOrWhiteSpace(level) && ParseLevel(level) is null ? $"{LevelVariable}={level} is not one of l1, l2, l3, nta" : null;
        string? e4 = !string.IsNullOrWhiteSpace(next) && ParseSwitch(next) is null ? $"{NextRowsVariable}={next} is not 0 or 1" : null;
        string? e5 = !string.IsNullOrWhiteSpace(spread) && ParseSwitch(spread) is null ? $"{SpreadVariable}={spread} is not 0 or 1" : null;
        if ((e1 ?? e2 ?? e3 ?? e4 ?? e5 ?? e6) is { } error) throw new ArgumentException(error);
    }

    /// <summary>The cache level the along-the-row prefetch fills (default <see cref="PrefetchLevel.L1"/>: PREFETCHT0).</summary>
    public static PrefetchLevel PrefetchLevel
    {
        get => (PrefetchLevel)Volatile.Read(ref s_level);
        set => Volatile.Write(ref s_level, Enum.IsDefined(value) ? (int)value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "unknown prefetch level"));
    }

    /// <summary>
    /// Whether each row block is also prefetched into L2 for the item's next row group (the same columns two gate/up rows
    /// or four down rows on): an item's memory is then asked for one row group ahead of the kernel, not only a few lines.
    /// </summary>
    public static bool NextRowsPrefetch
    {
        get => Volatile.Read(ref s_nextRows);
        set => Volatile.Write(ref s_nextRows, value);
    }

    /// <summary>
    /// Which rows a work item reads side by side. On (the default): the item's rows are cut into two runs (gate/up) or
    /// four (down) walked side by side, so each of the four streams stays contiguous through its run and the prefetch
    /// along a row runs on into the next row. Off: adjacent rows (rows i, i+1 of w1 and w3; rows j..j+3 of w2), so at
    /// every new group of rows some of the four streams start where no prefetch reached. Same arithmetic per row either
    /// way (bit-identical). Walking one row at a time, two streams per thread, lost 3.7-6.2 % on the H100 host
    /// (BENCHMARKS.md, session 15).
    /// </summary>
    public static bool SpreadRows
    {
        get => Volatile.Read(ref s_spread);
        set => Volatile.Write(ref s_spread, value);
    }

    /// <summary>l1, l2, l3 or nta (any case) as a level; null for anything else.</summary>
    public static PrefetchLevel? ParseLevel(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        "l1" or "t0" => PrefetchLevel.L1,
        "l2" or "t1" => PrefetchLevel.L2,
        "l3" or "t2" => PrefetchLevel.L3,
        "nta" => PrefetchLevel.NonTemporal,
        _ => null,
    };

    /// <summary>The level's name as <see cref="ParseLevel"/> reads it.</summary>
    public static string Name(PrefetchLevel level) => level switch
    {
        PrefetchLevel.L1 => "l1",
        PrefetchLevel.L2 => "l2",
        PrefetchLevel.L3 => "l3",
        _ => "nta",
    };

    /// <summary>"spread" (true) or "adjacent" (false), any case, as <see cref="SpreadRows"/>; null for anything else.</summary>
    public static bool? ParseRowOrder(string? text) => text?.Trim().ToLowerInvariant() switch { "spread" => true, "adjacent" => false, _ => null };

    /// <summary>The row order's name as <see cref="ParseRowOrder"/> reads it.</summary>
    public static string RowOrderName(bool spread) => spread ? "spread" : "adjacent";

    /// <summary>"0" or "1" as the next-rows switch; null for anything else.</summary>
    public static bool? ParseSwitch(string? text) => text?.Trim() switch { "0" => false, "1" => true, _ => null };

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

    /// <summary>
    /// Weight bytes per work item at the end of each phase of a region (0: off, every item <see cref="ItemBytes"/>): the
    /// last expert's rows that one full-size item per participant would cover are cut into items of this size, so when
    /// nothing is left to claim the threads still busy are at most one small item from done. Takes effect only below
    /// <see cref="ItemBytes"/>; the same arithmetic per row either way (bit-identical).
    /// </summary>
    public static int TailItemBytes
    {
        get => Volatile.Read(ref s_tailBytes);
        set => Volatile.Write(ref s_tailBytes, ValidTail(value) ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "tail item size must be 0 (off) or in 16 KiB..4 MiB"));
    }

    /// <summary>Whether <paramref name="v"/> is a tail item size <see cref="TailItemBytes"/> takes (0 or a work-item size).</summary>
    public static bool ValidTail(int v) => v == 0 || ValidItem(v);

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
        error = $"{name}={text} is out of range ({(unit == 1 ? "a multiple of 64 in 0..16384 bytes" : name == TailVariable ? "0 or 16..4096 KB" : "16..4096 KB")})";
        return fallback;
    }
}

/// <summary>One setting of all of <see cref="CpuKernelTuning"/>'s knobs: to apply, compare or print as a whole.</summary>
public readonly record struct CpuKernelSettings(int PrefetchBytes, PrefetchLevel Level, bool NextRows, int ItemBytes, bool SpreadRows, int TailItemBytes)
{
    /// <summary>
    /// What a latency-model profile records about the CPU kernel (<c>HardwareKey.CpuKernel</c>): the knobs as they are
    /// now, and ",huge-pages" where calibration's host experts sit in huge pages (<see cref="Runtime.HugePagePolicy.All"/>).
    /// </summary>
    public static string ProfileKey => Current.ToString() + (Runtime.HugePages.Policy == Runtime.HugePagePolicy.All ? ",huge-pages" : "");

    /// <summary>The knobs as they are now.</summary>
    public static CpuKernelSettings Current =>
        new(CpuKernelTuning.PrefetchBytes, CpuKernelTuning.PrefetchLevel, CpuKernelTuning.NextRowsPrefetch, CpuKernelTuning.ItemBytes, CpuKernelTuning.SpreadRows,
            CpuKernelTuning.TailItemBytes);

    /// <summary>Sets every knob, or none: all are checked first (<see cref="ArgumentOutOfRangeException"/>).</summary>
    public void Apply()
    {
        if (!CpuKernelTuning.ValidPrefetch(PrefetchBytes)) throw new ArgumentOutOfRangeException(nameof(PrefetchBytes), PrefetchBytes, "prefetch distance must be a multiple of 64 in 0..16384 bytes");
        if (!Enum.IsDefined(Level)) throw new ArgumentOutOfRangeException(nameof(Level), Level, "unknown prefetch level");
        if (!CpuKernelTuning.ValidItem(ItemBytes)) throw new ArgumentOutOfRangeException(nameof(ItemBytes), ItemBytes, "work item size must be in 16 KiB..4 MiB");
        if (!CpuKernelTuning.ValidTail(TailItemBytes)) throw new ArgumentOutOfRangeException(nameof(TailItemBytes), TailItemBytes, "tail item size must be 0 (off) or in 16 KiB..4 MiB");
        CpuKernelTuning.PrefetchBytes = PrefetchBytes;
        CpuKernelTuning.PrefetchLevel = Level;
        CpuKernelTuning.NextRowsPrefetch = NextRows;
        CpuKernelTuning.ItemBytes = ItemBytes;
        CpuKernelTuning.SpreadRows = SpreadRows;
        CpuKernelTuning.TailItemBytes = TailItemBytes;
    }

    /// <summary>"prefetch bytes,level,next rows (0/1),item KB,row order (spread/adjacent),tail item KB (0: off)", as
    /// <see cref="Parse"/> reads it.</summary>
    public override string ToString() =>
        $"{PrefetchBytes},{CpuKernelTuning.Name(Level)},{(NextRows ? 1 : 0)},{ItemBytes / 1024},{CpuKernelTuning.RowOrderName(SpreadRows)},{TailItemBytes / 1024}";

    /// <summary>
    /// "PREFETCH_BYTES,LEVEL,NEXT_ROWS[,ITEM_KB[,ROWS[,TAIL_KB]]]" (e.g. "2048,l1,1" or "1024,l1,0,512,adjacent,0"); an item
    /// size, row order or tail item size left out keeps the current one; ROWS is "spread" or "adjacent"
    /// (<see cref="CpuKernelTuning.SpreadRows"/>), TAIL_KB 0 (off) or 16..4096 (<see cref="CpuKernelTuning.TailItemBytes"/>).
    /// Throws <see cref="ArgumentException"/> saying which part is wrong.
    /// </summary>
    public static CpuKernelSettings Parse(string text)
    {
        string[] parts = (text ?? "").Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length is < 3 or > 6) throw new ArgumentException($"'{text}' is not PREFETCH_BYTES,LEVEL,NEXT_ROWS[,ITEM_KB[,ROWS[,TAIL_KB]]] (e.g. 2048,l1,1)");
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        int prefetch = int.TryParse(parts[0], System.Globalization.NumberStyles.Integer, inv, out int p) && CpuKernelTuning.ValidPrefetch(p) ? p
            : throw new ArgumentException($"'{parts[0]}' is not a prefetch distance (a multiple of 64 in 0..16384 bytes)");
        var level = CpuKernelTuning.ParseLevel(parts[1]) ?? throw new ArgumentException($"'{parts[1]}' is not a prefetch level (l1, l2, l3, nta)");
        bool next = CpuKernelTuning.ParseSwitch(parts[2]) ?? throw new ArgumentException($"'{parts[2]}' is not a next-rows switch (0 or 1)");
        int item = CpuKernelTuning.ItemBytes;
        if (parts.Length >= 4)
            item = int.TryParse(parts[3], System.Globalization.NumberStyles.Integer, inv, out int kb) && kb is > 0 and <= 4096 && CpuKernelTuning.ValidItem(kb * 1024) ? kb * 1024
                : throw new ArgumentException($"'{parts[3]}' is not a work-item size (16..4096 KB)");
        bool spread = parts.Length < 5 ? CpuKernelTuning.SpreadRows
            : CpuKernelTuning.ParseRowOrder(parts[4]) ?? throw new ArgumentException($"'{parts[4]}' is not a row order (spread or adjacent)");
        int tail = CpuKernelTuning.TailItemBytes;
        if (parts.Length >= 6)
            tail = int.TryParse(parts[5], System.Globalization.NumberStyles.Integer, inv, out int tkb) && tkb is >= 0 and <= 4096 && CpuKernelTuning.ValidTail(tkb * 1024) ? tkb * 1024
                : throw new ArgumentException($"'{parts[5]}' is not a tail item size (0 for off, or 16..4096 KB)");
        return new(prefetch, level, next, item, spread, tail);
    }
}

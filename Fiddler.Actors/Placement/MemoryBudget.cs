using System.Globalization;
using System.Text.RegularExpressions;

namespace Fiddler.Actors.Placement;

/// <summary>
/// Memory sizes as users write them on the command line (<c>--gpu-budget 24GiB</c>): a non-negative number and a unit.
/// Binary units (KiB, MiB, GiB, TiB, and the bare K, M, G, T as in <c>java -Xmx24G</c> and most GPU tools) are powers
/// of 1024; decimal units (KB, MB, GB, TB) are powers of 1000, as on a disk label. No unit, or B, means bytes.
/// </summary>
public static partial class MemoryBudget
{
    private const double Gib = 1L << 30;

    [GeneratedRegex(@"^\s*(?<sign>[-+]?)\s*(?<num>(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*(?<unit>[A-Za-z]*)\s*$")]
    private static partial Regex Pattern();

    /// <summary>Bytes in <paramref name="text"/>; throws <see cref="ArgumentException"/> with the reason otherwise.</summary>
    public static long Parse(string text) =>
        TryParse(text, out long bytes, out string? error) ? bytes : throw new ArgumentException(error);

    /// <summary>Parses without throwing; <paramref name="error"/> says what is wrong when it returns false.</summary>
    public static bool TryParse(string? text, out long bytes, out string? error)
    {
        bytes = 0;
        error = null;
        string shown = text?.Trim() ?? "";
        var m = text is null ? null : Pattern().Match(text);
        if (m is null || !m.Success)
        {
            error = $"memory size '{shown}' is not a number with a unit (examples: 24GiB, 512MiB, 80GB, 1073741824)";
            return false;
        }
        if (m.Groups["sign"].Value == "-")
        {
            error = $"memory size '{shown}' must not be negative";
            return false;
        }
        if (UnitBytes(m.Groups["unit"].Value) is not { } unit)
        {
            error = $"memory size '{shown}': unknown unit '{m.Groups["unit"].Value}' " +
                    "(use B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB or TB)";
            return false;
        }
        double value = double.Parse(m.Groups["num"].Value, NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent, CultureInfo.InvariantCulture) * unit;
        // 2^63 itself is not representable as long; anything at or above it overflows.
        if (value >= 9.2233720368547758E18)
        {
            error = $"memory size '{shown}' is too large";
            return false;
        }
        bytes = (long)Math.Floor(value);
        return true;
    }

    private static double? UnitBytes(string unit) => unit.ToLowerInvariant() switch
    {
        "" or "b" => 1,
        "k" or "ki" or "kib" => 1L << 10,
        "m" or "mi" or "mib" => 1L << 20,
        "g" or "gi" or "gib" => 1L << 30,
        "t" or "ti" or "tib" => 1L << 40,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => null,
    };

    /// <summary><paramref name="bytes"/> in GiB.</summary>
    public static double ToGiB(long bytes) => bytes / Gib;

    /// <summary>A size for messages: "24 GiB", "1.5 GiB", "0.33 GiB" (up to two decimals, no trailing zeros); under 0.1 GiB in
    /// MiB ("10 MiB", "0.662 MiB").</summary>
    public static string Format(long bytes) => bytes >= Gib / 10 || bytes == 0
        ? $"{ToGiB(bytes).ToString("0.##", CultureInfo.InvariantCulture)} GiB"
        : $"{(bytes / 1048576.0).ToString("0.###", CultureInfo.InvariantCulture)} MiB"; // a small budget is not "0 GiB"

    /// <summary>A size with exactly one decimal, for tables and component sums: "3.0 GiB".</summary>
    public static string Format1(long bytes) => bytes >= Gib / 10 || bytes == 0
        ? $"{ToGiB(bytes).ToString("0.0", CultureInfo.InvariantCulture)} GiB"
        : $"{(bytes / 1048576.0).ToString("0.###", CultureInfo.InvariantCulture)} MiB";
}

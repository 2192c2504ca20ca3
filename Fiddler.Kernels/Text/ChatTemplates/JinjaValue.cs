using System.Globalization;
using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

// Template values are plain objects with Python meaning: null = None, bool, long = int, double = float, string,
// List<object?> = list, object?[] = tuple, JinjaDict = dict, and the types below.

/// <summary>jinja2's default Undefined: prints empty, is falsy and iterable-empty; most operations on it fail.</summary>
internal sealed class JinjaUndefined(string hint)
{
    /// <summary>The message jinja2 gives when the value is used: "'x' is undefined" or "'dict object' has no attribute 'y'".</summary>
    public string Hint { get; } = hint;

    public static JinjaUndefined ForName(string name) => new($"'{name}' is undefined");

    public static JinjaUndefined ForAttr(object? obj, object? key) =>
        new($"'{JinjaValue.TypeName(obj)} object' has no attribute {JinjaValue.Repr(key)}");

    public override string ToString() => "";
}

/// <summary>A Python dict: insertion-ordered, keys compared the Python way (1 == 1.0 == True).</summary>
internal sealed class JinjaDict() : OrderedDictionary<object, object?>(PyKeyComparer.Instance)
{
    public JinjaDict(IEnumerable<KeyValuePair<string, object?>> items) : this()
    {
        foreach (var (k, v) in items)
        {
            this[k] = v;
        }
    }
}

/// <summary>jinja2's namespace(): the one object templates may assign attributes to.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attrs { get; } = new(StringComparer.Ordinal);
}

/// <summary>A global function, filter-like builtin, bound method or macro.</summary>
internal sealed class JinjaCallable(string name, Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?> invoke)
{
    public string Name { get; } = name;

    public object? Invoke(IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs) => invoke(args, kwargs);
}

/// <summary>A failure while rendering: a template's raise_exception, an undefined value used, a type error.</summary>
internal sealed class JinjaRenderException(string message) : Exception(message);

internal sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();

    public new bool Equals(object? x, object? y) => JinjaValue.PyEquals(x, y);

    public int GetHashCode(object obj) => obj switch
    {
        bool b => b ? 1 : 0,
        long l => l.GetHashCode(),
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e18 => ((long)d).GetHashCode(),
        string s => s.GetHashCode(StringComparison.Ordinal),
        _ => obj.GetHashCode(),
    };
}

internal static class JinjaValue
{
    public static bool IsNumber(object? v) => v is bool or long or double;

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        object?[] => "tuple",
        JinjaDict => "dict",
        JinjaNamespace => "Namespace",
        JinjaUndefined => "Undefined",
        JinjaCallable => "function",
        LoopContext => "LoopContext",
        _ => v.GetType().Name,
    };

    public static bool Truthy(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        object?[] t => t.Length > 0,
        JinjaDict d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str().</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        JinjaUndefined => "",
        _ => Repr(v),
    };

    /// <summary>Python's repr().</summary>
    public static string Repr(object? v) => v switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        string s => StrRepr(s),
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        object?[] t => t.Length == 1 ? $"({Repr(t[0])},)" : "(" + string.Join(", ", t.Select(Repr)) + ")",
        JinjaDict d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        JinjaNamespace ns => "<Namespace " + Repr(new JinjaDict(ns.Attrs)) + ">",
        JinjaUndefined => "Undefined",
        JinjaCallable c => $"<function {c.Name}>",
        _ => v.ToString() ?? "",
    };

    /// <summary>Python's repr(float): shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d))
        {
            return "nan";
        }
        if (double.IsInfinity(d))
        {
            return d > 0 ? "inf" : "-inf";
        }
        string s = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int exp = 0, e = s.IndexOf('E');
        if (e >= 0)
        {
            exp = int.Parse(s[(e + 1)..], CultureInfo.InvariantCulture);
            s = s[..e];
        }
        int dot = s.IndexOf('.');
        string intPart = dot < 0 ? s : s[..dot];
        string digits = intPart + (dot < 0 ? "" : s[(dot + 1)..]);
        int decpt = intPart.Length + exp;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0')
        {
            lead++;
            decpt--;
        }
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0)
        {
            digits = "0";
            decpt = 1;
        }
        string sign = double.IsNegative(d) ? "-" : "";
        if (decpt <= -4 || decpt > 16)
        {
            string mantissa = digits.Length > 1 ? digits[0] + "." + digits[1..] : digits;
            int x = decpt - 1;
            return $"{sign}{mantissa}e{(x < 0 ? '-' : '+')}{Math.Abs(x):00}";
        }
        if (decpt <= 0)
        {
            return sign + "0." + new string('0', -decpt) + digits;
        }
        if (decpt >= digits.Length)
        {
            return sign + digits + new string('0', decpt - digits.Length) + ".0";
        }
        return sign + digits[..decpt] + "." + digits[decpt..];
    }

    private static string StrRepr(string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(quote);
        foreach (var rune in s.EnumerateRunes())
        {
            int c = rune.Value;
            if (c == quote || c == '\\')
            {
                sb.Append('\\').Append((char)c);
            }
            else if (c == '\n')
            {
                sb.Append("\\n");
            }
            else if (c == '\r')
            {
                sb.Append("\\r");
            }
            else if (c == '\t')
            {
                sb.Append("\\t");
            }
            else if (IsPrintable(rune))
            {
                sb.Append(rune.ToString());
            }
            else
            {
                sb.Append(c < 0x100 ? $"\\x{c:x2}" : c < 0x10000 ? $"\\u{c:x4}" : $"\\U{c:x8}");
            }
        }
        return sb.Append(quote).ToString();
    }

    private static bool IsPrintable(Rune r) =>
        r.Value == ' ' || Rune.GetUnicodeCategory(r) is not (UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator
            or UnicodeCategory.ParagraphSeparator or UnicodeCategory.SpaceSeparator);

    public static bool PyEquals(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLong(a) == ToLong(b);
        }
        return (a, b) switch
        {
            (null, null) => true,
            (JinjaUndefined, JinjaUndefined) => true,
            (string x, string y) => string.Equals(x, y, StringComparison.Ordinal),
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => PyEquals(p.First, p.Second)),
            (object?[] x, object?[] y) => x.Length == y.Length && x.Zip(y).All(p => PyEquals(p.First, p.Second)),
            (JinjaDict x, JinjaDict y) => x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var v) && PyEquals(kv.Value, v)),
            _ => ReferenceEquals(a, b),
        };
    }

    /// <summary>Python ordering for &lt; &gt; &lt;= &gt;=: numbers, strings (by code point), same-kind sequences.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        }
        switch (a, b)
        {
            case (string x, string y):
                return CompareCodePoints(x, y);
            case (List<object?> or object?[], List<object?> or object?[]) when a.GetType() == b.GetType():
                var xs = Items(a);
                var ys = Items(b);
                for (int i = 0; i < Math.Min(xs.Count, ys.Count); i++)
                {
                    if (!PyEquals(xs[i], ys[i]))
                    {
                        return Compare(xs[i], ys[i], op);
                    }
                }
                return xs.Count.CompareTo(ys.Count);
        }
        if (a is JinjaUndefined u)
        {
            throw new JinjaRenderException(u.Hint);
        }
        if (b is JinjaUndefined v)
        {
            throw new JinjaRenderException(v.Hint);
        }
        throw new JinjaRenderException($"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    private static int CompareCodePoints(string x, string y)
    {
        var ex = x.EnumerateRunes();
        var ey = y.EnumerateRunes();
        while (true)
        {
            bool hx = ex.MoveNext(), hy = ey.MoveNext();
            if (!hx || !hy)
            {
                return hx.CompareTo(hy);
            }
            int c = ex.Current.Value.CompareTo(ey.Current.Value);
            if (c != 0)
            {
                return c;
            }
        }
    }

    public static double ToDouble(object? v) => v switch
    {
        bool b => b ? 1 : 0,
        long l => l,
        double d => d,
        _ => throw new JinjaRenderException($"expected a number, got '{TypeName(v)}'"),
    };

    public static long ToLong(object? v) => v switch
    {
        bool b => b ? 1 : 0,
        long l => l,
        _ => throw new JinjaRenderException($"'{TypeName(v)}' object cannot be interpreted as an integer"),
    };

    /// <summary>The items a Python for-loop would produce.</summary>
    public static IReadOnlyList<object?> Items(object? v) => v switch
    {
        List<object?> l => l,
        object?[] t => t,
        string s => CodePoints(s),
        JinjaDict d => d.Keys.ToList<object?>(),
        JinjaUndefined => [],
        _ => throw new JinjaRenderException($"'{TypeName(v)}' object is not iterable"),
    };

    /// <summary>A Python str as its characters (code points, so an emoji is one item as in Python).</summary>
    public static List<object?> CodePoints(string s)
    {
        var list = new List<object?>(s.Length);
        foreach (var r in s.EnumerateRunes())
        {
            list.Add(r.ToString());
        }
        return list;
    }

    public static int Length(object? v) => v switch
    {
        string s => s.EnumerateRunes().Count(),
        List<object?> l => l.Count,
        object?[] t => t.Length,
        JinjaDict d => d.Count,
        JinjaUndefined => 0,
        _ => throw new JinjaRenderException($"object of type '{TypeName(v)}' has no len()"),
    };
}

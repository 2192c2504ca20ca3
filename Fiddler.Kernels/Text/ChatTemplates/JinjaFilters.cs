using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>The jinja2 filters chat templates use, with jinja2/filters.py semantics (and transformers' tojson).</summary>
internal static partial class JinjaFilters
{
    private static readonly HashSet<string> Names =
    [
        "abs", "attr", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "indent", "int", "items",
        "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse",
        "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper",
        "wordcount",
    ];

    public static bool Has(string name) => Names.Contains(name);

    private readonly record struct Params(IReadOnlyList<object?> Args, IReadOnlyList<(string Name, object? Value)> Kwargs)
    {
        /// <summary>Parameter <paramref name="i"/> (0 = first after the filtered value) by position or keyword.</summary>
        public object? Get(int i, string name, object? dflt = null)
        {
            if (i < Args.Count)
            {
                return Args[i];
            }
            foreach (var (k, v) in Kwargs)
            {
                if (k == name)
                {
                    return v;
                }
            }
            return dflt;
        }
    }

    public static object? Filter(string name, object? v, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs, string src, int pos)
    {
        var p = new Params(args, kwargs);
        switch (name)
        {
            case "default" or "d":
                return v is JinjaUndefined || (JinjaValue.Truthy(p.Get(1, "boolean", false)) && !JinjaValue.Truthy(v)) ? p.Get(0, "default_value", "") : v;
            case "length" or "count":
                return (long)JinjaValue.Length(v);
            case "string" or "safe":
                return JinjaValue.Str(v);
            case "trim":
                return JinjaMethods.PyStrip(JinjaValue.Str(v), p.Get(0, "chars"), true, true);
            case "upper":
                return JinjaValue.Str(v).ToUpperInvariant();
            case "lower":
                return JinjaValue.Str(v).ToLowerInvariant();
            case "capitalize":
                return JinjaMethods.Capitalize(JinjaValue.Str(v));
            case "title":
                // jinja2 do_title: words begin after "-", whitespace, or one of ({[<
                return string.Concat(WordBeginning().Split(JinjaValue.Str(v)).Where(s => s.Length > 0)
                    .Select(s => char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant()));
            case "replace":
                var count = p.Get(2, "count");
                return JinjaMethods.Replace(JinjaValue.Str(v), JinjaValue.Str(p.Get(0, "old")), JinjaValue.Str(p.Get(1, "new")),
                    count is null ? -1 : JinjaValue.ToLong(count));
            case "first":
                var items = JinjaValue.Items(v);
                return items.Count > 0 ? items[0] : new JinjaUndefined("No first item, sequence was empty.");
            case "last":
                var all = JinjaValue.Items(v);
                return all.Count > 0 ? all[^1] : new JinjaUndefined("No last item, sequence was empty.");
            case "join":
                var attribute = p.Get(1, "attribute");
                var parts = JinjaValue.Items(v).Select(x => attribute is null ? x : GetPath(x, attribute, src, pos));
                return string.Join(JinjaValue.Str(p.Get(0, "d", "")), parts.Select(JinjaValue.Str));
            case "list":
                return JinjaValue.Items(v).ToList();
            case "items":
                return v switch
                {
                    JinjaUndefined => new List<object?>(),
                    JinjaDict d => d.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(),
                    _ => throw new JinjaRenderException("Can only get item pairs from a mapping."),
                };
            case "int":
                return ToInt(v, p.Get(0, "default", 0L), JinjaValue.ToLong(p.Get(1, "base", 10L)));
            case "float":
                return ToFloat(v, p.Get(0, "default", 0.0));
            case "abs":
                return v switch
                {
                    double d => (object)Math.Abs(d),
                    _ => checked(Math.Abs(JinjaValue.ToLong(v))),
                };
            case "round":
                return Round(JinjaValue.ToDouble(v), (int)JinjaValue.ToLong(p.Get(0, "precision", 0L)), JinjaValue.Str(p.Get(1, "method", "common")));
            case "tojson":
                return JinjaJson.Dumps(v, p.Get(0, "ensure_ascii", false), p.Get(1, "indent"), p.Get(2, "separators"), JinjaValue.Truthy(p.Get(3, "sort_keys", false)));
            case "indent":
                return Indent(JinjaValue.Str(v), p.Get(0, "width", 4L), JinjaValue.Truthy(p.Get(1, "first", false)), JinjaValue.Truthy(p.Get(2, "blank", false)));
            case "escape" or "e":
                return JinjaValue.Str(v).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");
            case "wordcount":
                return (long)Word().Matches(JinjaValue.Str(v)).Count;
            case "attr":
                return JinjaBuiltins.GetAttr(v, JinjaValue.Str(p.Get(0, "name")), src, pos);
            case "selectattr" or "rejectattr" or "select" or "reject":
                return SelectOrReject(name, v, args, src, pos);
            case "map":
                return Map(v, p, src, pos);
            case "reverse":
                return v is string s ? string.Concat(JinjaValue.CodePoints(s).Cast<string>().Reverse()) : JinjaValue.Items(v).Reverse().ToList();
            case "sort":
                return Sorted(v, JinjaValue.Truthy(p.Get(0, "reverse", false)), JinjaValue.Truthy(p.Get(1, "case_sensitive", false)), p.Get(2, "attribute"), src, pos);
            case "unique":
                return Unique(v, JinjaValue.Truthy(p.Get(0, "case_sensitive", false)), p.Get(1, "attribute"), src, pos);
            case "min" or "max":
                var sorted = Sorted(v, name == "max", JinjaValue.Truthy(p.Get(0, "case_sensitive", false)), p.Get(1, "attribute"), src, pos);
                return sorted.Count > 0 ? sorted[0] : new JinjaUndefined("No aggregated item, sequence was empty.");
            case "sum":
                object? total = p.Get(1, "start", 0L);
                var attr = p.Get(0, "attribute");
                foreach (var x in JinjaValue.Items(v))
                {
                    total = JinjaOperators.Binary("+", total, attr is null ? x : GetPath(x, attr, src, pos));
                }
                return total;
            default:
                throw JinjaSyntax.Unsupported(src, pos, $"filter '{name}'");
        }
    }

    [GeneratedRegex(@"([-\s({\[<]+)")]
    private static partial Regex WordBeginning();

    [GeneratedRegex(@"\w+")]
    private static partial Regex Word();

    /// <summary>jinja2 make_attrgetter: "a.b.0" walks items (integers as indices).</summary>
    private static object? GetPath(object? item, object? path, string src, int pos)
    {
        if (path is long)
        {
            return JinjaBuiltins.GetItem(item, path, src, pos);
        }
        foreach (var part in JinjaValue.Str(path).Split('.'))
        {
            object key = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long i) ? i : part;
            item = JinjaBuiltins.GetItem(item, key, src, pos);
        }
        return item;
    }

    private static List<object?> SelectOrReject(string name, object? v, IReadOnlyList<object?> args, string src, int pos)
    {
        bool byAttr = name.EndsWith("attr", StringComparison.Ordinal);
        bool select = name.StartsWith("select", StringComparison.Ordinal);
        int testAt = byAttr ? 1 : 0;
        if (byAttr && args.Count == 0)
        {
            throw new JinjaRenderException("Missing parameter for attribute name");
        }
        string? test = args.Count > testAt ? JinjaValue.Str(args[testAt]) : null;
        if (test is not null && !JinjaBuiltins.HasTest(test))
        {
            throw JinjaSyntax.Unsupported(src, pos, $"test '{test}'");
        }
        var testArgs = args.Skip(testAt + 1).ToList();
        var result = new List<object?>();
        foreach (var item in JinjaValue.Items(v))
        {
            var probe = byAttr ? GetPath(item, args[0], src, pos) : item;
            bool ok = test is null ? JinjaValue.Truthy(probe) : JinjaBuiltins.Test(test, probe, testArgs);
            if (ok == select)
            {
                result.Add(item);
            }
        }
        return result;
    }

    private static List<object?> Map(object? v, Params p, string src, int pos)
    {
        var items = JinjaValue.Items(v);
        // map(attribute='x', default=...) or map('filter', args...)
        if (p.Args.Count == 0 && p.Get(int.MaxValue, "attribute") is { } attribute)
        {
            bool hasDefault = p.Kwargs.Any(k => k.Name == "default");
            var dflt = p.Get(int.MaxValue, "default");
            return items.Select(x => GetPath(x, attribute, src, pos) is var got && got is JinjaUndefined && hasDefault ? dflt : got).ToList();
        }
        if (p.Args.Count == 0)
        {
            throw new JinjaRenderException("map requires a filter argument");
        }
        string filter = JinjaValue.Str(p.Args[0]);
        if (!Has(filter))
        {
            throw JinjaSyntax.Unsupported(src, pos, $"filter '{filter}'");
        }
        var rest = p.Args.Skip(1).ToList();
        return items.Select(x => Filter(filter, x, rest, p.Kwargs, src, pos)).ToList();
    }

    private static List<object?> Sorted(object? v, bool reverse, bool caseSensitive, object? attribute, string src, int pos)
    {
        object? Key(object? x)
        {
            var k = attribute is null ? x : GetPath(x, attribute, src, pos);
            return !caseSensitive && k is string s ? s.ToLowerInvariant() : k;
        }
        var list = JinjaValue.Items(v).ToList();
        var keyed = list.Select((x, i) => (Key: Key(x), Item: x, Index: i)).ToList();
        // Stable, like Python's sorted().
        keyed.Sort((a, b) =>
        {
            int c = JinjaValue.Compare(a.Key, b.Key, "<");
            return c != 0 ? (reverse ? -c : c) : a.Index.CompareTo(b.Index);
        });
        return keyed.Select(k => k.Item).ToList();
    }

    private static List<object?> Unique(object? v, bool caseSensitive, object? attribute, string src, int pos)
    {
        var seen = new List<object?>();
        var result = new List<object?>();
        foreach (var x in JinjaValue.Items(v))
        {
            var k = attribute is null ? x : GetPath(x, attribute, src, pos);
            if (!caseSensitive && k is string s)
            {
                k = s.ToLowerInvariant();
            }
            if (!seen.Any(y => JinjaValue.PyEquals(y, k)))
            {
                seen.Add(k);
                result.Add(x);
            }
        }
        return result;
    }

    private static object? ToInt(object? v, object? dflt, long numberBase)
    {
        switch (v)
        {
            case bool or long:
                return JinjaValue.ToLong(v);
            case double d:
                return double.IsFinite(d) ? (long)Math.Truncate(d) : dflt;
            case string s:
                string t = s.Trim().Replace("_", "");
                try
                {
                    return Convert.ToInt64(t, (int)numberBase);
                }
                catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
                {
                    return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && double.IsFinite(f)
                        ? (long)Math.Truncate(f) : dflt;
                }
            default:
                return dflt;
        }
    }

    private static object? ToFloat(object? v, object? dflt) => v switch
    {
        bool or long or double => JinjaValue.ToDouble(v),
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
        _ => dflt,
    };

    private static double Round(double value, int precision, string method)
    {
        double scale = Math.Pow(10, precision);
        return method switch
        {
            "common" => Math.Round(value, Math.Clamp(precision, 0, 15), MidpointRounding.ToEven),
            "ceil" => Math.Ceiling(value * scale) / scale,
            "floor" => Math.Floor(value * scale) / scale,
            _ => throw new JinjaRenderException("method must be common, ceil or floor"),
        };
    }

    /// <summary>jinja2 do_indent (3.x): appends "\n" before splitting, so a trailing newline is kept.</summary>
    private static string Indent(string s, object? width, bool first, bool blank)
    {
        string indention = width as string ?? new string(' ', (int)JinjaValue.ToLong(width));
        var lines = SplitLines(s + "\n");
        string rv;
        if (blank)
        {
            rv = string.Join("\n" + indention, lines);
        }
        else
        {
            rv = lines[0];
            if (lines.Count > 1)
            {
                rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? indention + l : l));
            }
        }
        return first ? indention + rv : rv;
    }

    /// <summary>Python str.splitlines() (no keepends).</summary>
    public static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                lines.Add(s[start..i]);
                if (c == '\r' && i + 1 < s.Length && s[i + 1] == '\n')
                {
                    i++;
                }
                start = i + 1;
            }
        }
        if (start < s.Length)
        {
            lines.Add(s[start..]);
        }
        return lines;
    }
}

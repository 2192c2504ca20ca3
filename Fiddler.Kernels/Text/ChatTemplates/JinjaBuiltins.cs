using System.Globalization;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>Attribute/item access the way jinja2's sandbox resolves it, the global functions, and the tests.</summary>
internal static class JinjaBuiltins
{
    private const int MaxRange = 100_000; // jinja2.sandbox.MAX_RANGE

    /// <summary>Tests this interpreter implements (jinja2/tests.py names).</summary>
    private static readonly HashSet<string> Tests =
    [
        "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
        "iterable", "sequence", "callable", "sameas", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=",
        "gt", "greaterthan", ">", "ge", ">=", "in", "odd", "even", "divisibleby", "lower", "upper", "escaped",
    ];

    public static bool HasTest(string name) => Tests.Contains(name);

    public static bool HasFilter(string name) => JinjaFilters.Has(name);

    public static object? Global(string name) => name switch
    {
        "range" => new JinjaCallable("range", (a, _) => Range(a)),
        "dict" => new JinjaCallable("dict", (a, kw) => MakeDict(a, kw)),
        "namespace" => new JinjaCallable("namespace", (a, kw) =>
        {
            var ns = new JinjaNamespace();
            foreach (var (k, v) in MakeDict(a, kw))
            {
                ns.Attrs[JinjaValue.Str(k)] = v;
            }
            return ns;
        }),
        "raise_exception" => new JinjaCallable("raise_exception", (a, _) =>
            throw new JinjaRenderException(a.Count > 0 ? JinjaValue.Str(a[0]) : "")),
        "strftime_now" => new JinjaCallable("strftime_now", (a, _) =>
            JinjaStrftime.Format(DateTime.Now, a.Count > 0 && a[0] is string f ? f : throw new JinjaRenderException("strftime_now() needs a format string"))),
        _ => null,
    };

    private static List<object?> Range(IReadOnlyList<object?> a)
    {
        long start = 0, stop, step = 1;
        switch (a.Count)
        {
            case 1: stop = JinjaValue.ToLong(a[0]); break;
            case 2: start = JinjaValue.ToLong(a[0]); stop = JinjaValue.ToLong(a[1]); break;
            case 3: start = JinjaValue.ToLong(a[0]); stop = JinjaValue.ToLong(a[1]); step = JinjaValue.ToLong(a[2]); break;
            default: throw new JinjaRenderException($"range expected 1 to 3 arguments, got {a.Count}");
        }
        if (step == 0)
        {
            throw new JinjaRenderException("range() arg 3 must not be zero");
        }
        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (list.Count >= MaxRange)
            {
                throw new JinjaRenderException($"Range too big. The sandbox blocks ranges larger than MAX_RANGE ({MaxRange}).");
            }
            list.Add(i);
        }
        return list;
    }

    private static JinjaDict MakeDict(IReadOnlyList<object?> a, IReadOnlyList<(string Name, object? Value)> kw)
    {
        var dict = new JinjaDict();
        if (a.Count > 0)
        {
            if (a[0] is JinjaDict src)
            {
                foreach (var (k, v) in src)
                {
                    dict[k] = v;
                }
            }
            else
            {
                foreach (var pair in JinjaValue.Items(a[0]))
                {
                    var kv = JinjaValue.Items(pair);
                    dict[kv[0] ?? throw new JinjaRenderException("None as a dict key is not supported")] = kv[1];
                }
            }
        }
        foreach (var (k, v) in kw)
        {
            dict[k] = v;
        }
        return dict;
    }

    /// <summary><c>obj.name</c>: a Python attribute (method) first, then the item, else undefined.</summary>
    public static object? GetAttr(object? obj, string name, string src, int pos)
    {
        switch (obj)
        {
            case JinjaUndefined u:
                throw new JinjaRenderException(u.Hint);
            case JinjaNamespace ns:
                return ns.Attrs.TryGetValue(name, out var v) ? v : JinjaUndefined.ForAttr(obj, name);
            case LoopContext loop:
                return loop.Attr(name);
        }
        var method = JinjaMethods.Bind(obj, name, src, pos);
        if (method is not null)
        {
            return method;
        }
        if (obj is JinjaDict d)
        {
            return d.TryGetValue(name, out var value) ? value : JinjaUndefined.ForAttr(obj, name);
        }
        return JinjaUndefined.ForAttr(obj, name);
    }

    /// <summary><c>obj[key]</c>: the item first, then (for a string key) the attribute, else undefined.</summary>
    public static object? GetItem(object? obj, object? key, string src, int pos)
    {
        switch (obj)
        {
            case JinjaUndefined u:
                throw new JinjaRenderException(u.Hint);
            case JinjaDict d when key is not null && d.TryGetValue(key, out var value):
                return value;
            case List<object?> or object?[] or string when key is long or bool:
                var items = obj is string s ? JinjaValue.CodePoints(s) : JinjaValue.Items(obj);
                long i = JinjaValue.ToLong(key);
                if (i < 0)
                {
                    i += items.Count;
                }
                return i >= 0 && i < items.Count ? items[(int)i] : new JinjaUndefined($"'{JinjaValue.TypeName(obj)} object' has no element {key}");
        }
        if (key is string name)
        {
            return obj is JinjaNamespace or LoopContext ? JinjaUndefined.ForAttr(obj, name) : GetAttr(obj, name, src, pos);
        }
        return new JinjaUndefined($"'{JinjaValue.TypeName(obj)} object' has no element {JinjaValue.Repr(key)}");
    }

    /// <summary>Python slicing of a list, tuple or string.</summary>
    public static object? Slice(object? obj, object? start, object? stop, object? step)
    {
        if (obj is JinjaUndefined u)
        {
            throw new JinjaRenderException(u.Hint);
        }
        var items = obj switch
        {
            string s => JinjaValue.CodePoints(s),
            List<object?> or object?[] => JinjaValue.Items(obj),
            _ => throw new JinjaRenderException($"'{JinjaValue.TypeName(obj)}' object is not subscriptable"),
        };
        int n = items.Count;
        long st = step is null ? 1 : JinjaValue.ToLong(step);
        if (st == 0)
        {
            throw new JinjaRenderException("slice step cannot be zero");
        }
        long Clamp(object? v, long dflt)
        {
            if (v is null)
            {
                return dflt;
            }
            long x = JinjaValue.ToLong(v);
            if (x < 0)
            {
                x += n;
            }
            return st > 0 ? Math.Clamp(x, 0, n) : Math.Clamp(x, -1, n - 1);
        }
        long from = Clamp(start, st > 0 ? 0 : n - 1), to = Clamp(stop, st > 0 ? n : -1);
        var result = new List<object?>();
        for (long i = from; st > 0 ? i < to : i > to; i += st)
        {
            result.Add(items[(int)i]);
        }
        return obj switch
        {
            string => string.Concat(result.Cast<string>()),
            object?[] => result.ToArray(),
            _ => result,
        };
    }

    public static bool Test(string name, object? v, IReadOnlyList<object?> args)
    {
        object? Arg() => args.Count > 0 ? args[0] : throw new JinjaRenderException($"test '{name}' needs an argument");
        return name switch
        {
            "defined" => v is not JinjaUndefined,
            "undefined" => v is JinjaUndefined,
            "none" => v is null,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "integer" => v is long,
            "float" => v is double,
            "number" => JinjaValue.IsNumber(v),
            "string" => v is string,
            "mapping" => v is JinjaDict,
            "iterable" => v is string or List<object?> or object?[] or JinjaDict or JinjaUndefined,
            "sequence" => v is string or List<object?> or object?[] or JinjaDict,
            "callable" => v is JinjaCallable,
            "sameas" => ReferenceEquals(v, Arg()) || (v is null && Arg() is null) || (v is bool b && Arg() is bool c && b == c),
            "eq" or "equalto" or "==" => JinjaValue.PyEquals(v, Arg()),
            "ne" or "!=" => !JinjaValue.PyEquals(v, Arg()),
            "lt" or "lessthan" or "<" => JinjaValue.Compare(v, Arg(), "<") < 0,
            "le" or "<=" => JinjaValue.Compare(v, Arg(), "<=") <= 0,
            "gt" or "greaterthan" or ">" => JinjaValue.Compare(v, Arg(), ">") > 0,
            "ge" or ">=" => JinjaValue.Compare(v, Arg(), ">=") >= 0,
            "in" => JinjaOperators.Contains(Arg(), v),
            "odd" => JinjaValue.ToLong(v) % 2 != 0,
            "even" => JinjaValue.ToLong(v) % 2 == 0,
            "divisibleby" => JinjaValue.ToLong(v) % JinjaValue.ToLong(Arg()) == 0,
            "lower" => JinjaValue.Str(v) is var s && s == s.ToLowerInvariant(),
            "upper" => JinjaValue.Str(v) is var s2 && s2 == s2.ToUpperInvariant(),
            "escaped" => false,
            _ => throw new NotSupportedException($"chat template: unsupported test '{name}'"),
        };
    }
}

/// <summary>Python's datetime.strftime for the directives chat templates use ("%d %b %Y" and friends).</summary>
internal static class JinjaStrftime
{
    public static string Format(DateTime t, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char c = format[++i];
            sb.Append(c switch
            {
                'a' => t.ToString("ddd", inv),
                'A' => t.ToString("dddd", inv),
                'b' => t.ToString("MMM", inv),
                'B' => t.ToString("MMMM", inv),
                'd' => t.ToString("dd", inv),
                'm' => t.ToString("MM", inv),
                'y' => t.ToString("yy", inv),
                'Y' => t.Year.ToString(inv),
                'H' => t.ToString("HH", inv),
                'I' => t.ToString("hh", inv),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'M' => t.ToString("mm", inv),
                'S' => t.ToString("ss", inv),
                'f' => t.ToString("ffffff", inv),
                'j' => t.DayOfYear.ToString("000", inv),
                'w' => ((int)t.DayOfWeek).ToString(inv),
                'e' => t.Day.ToString(inv).PadLeft(2),
                '%' => "%",
                _ => throw new NotSupportedException($"chat template: unsupported strftime directive '%{c}'"),
            });
        }
        return sb.ToString();
    }
}

using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>Python methods on str, dict and list that templates call (<c>content.strip()</c>, <c>message.get('x')</c>).</summary>
internal static class JinjaMethods
{
    private static readonly HashSet<string> PythonStrMethods =
    [
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format", "format_map",
        "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
        "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
        "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
    ];

    private static readonly HashSet<string> PythonDictMethods =
        ["clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values"];

    private static readonly HashSet<string> PythonListMethods =
        ["append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort"];

    /// <summary>
    /// Whether <paramref name="name"/> is a Python method of str, dict or list that no type here implements: a call to
    /// it can never render, so the parser refuses the template at load instead of failing a request that reaches it.
    /// </summary>
    public static bool IsUnimplementedEverywhere(string name) =>
        (PythonStrMethods.Contains(name) || PythonDictMethods.Contains(name) || PythonListMethods.Contains(name))
        && !(PythonStrMethods.Contains(name) && StrMethod("", name) is not null)
        && !(PythonDictMethods.Contains(name) && DictMethod(new JinjaDict(), name) is not null)
        && !(PythonListMethods.Contains(name) && ListMethod(Array.Empty<object?>(), name) is not null);

    /// <summary>The Python type a method name belongs to, for messages ("str" first, as templates mostly call those).</summary>
    public static string OwnerOf(string name) =>
        PythonStrMethods.Contains(name) ? "str" : PythonDictMethods.Contains(name) ? "dict" : PythonListMethods.Contains(name) ? "list" : "object";

    /// <summary>The bound method <paramref name="name"/> of <paramref name="obj"/>, or null when it has none.</summary>
    public static JinjaCallable? Bind(object? obj, string name, string src, int pos)
    {
        Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?>? fn = obj switch
        {
            string s when PythonStrMethods.Contains(name) => StrMethod(s, name),
            JinjaDict d when PythonDictMethods.Contains(name) => DictMethod(d, name),
            List<object?> or object?[] when PythonListMethods.Contains(name) => ListMethod(JinjaValue.Items(obj), name),
            _ => null,
        };
        if (fn is null && (obj is string && PythonStrMethods.Contains(name) || obj is JinjaDict && PythonDictMethods.Contains(name)
                           || obj is List<object?> or object?[] && PythonListMethods.Contains(name)))
        {
            throw JinjaSyntax.Unsupported(src, pos, $"method {JinjaValue.TypeName(obj)}.{name}()");
        }
        return fn is null ? null : new JinjaCallable(name, fn);
    }

    private static object? Arg(IReadOnlyList<object?> a, IReadOnlyList<(string Name, object? Value)> kw, int i, string name, object? dflt)
    {
        if (i < a.Count)
        {
            return a[i];
        }
        foreach (var (k, v) in kw)
        {
            if (k == name)
            {
                return v;
            }
        }
        return dflt;
    }

    private static string StrArg(object? v, string method) =>
        v as string ?? throw new JinjaRenderException($"{method}() argument must be str, not {JinjaValue.TypeName(v)}");

    private static Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?>? StrMethod(string s, string name) => name switch
    {
        "strip" => (a, kw) => PyStrip(s, Arg(a, kw, 0, "chars", null), true, true),
        "lstrip" => (a, kw) => PyStrip(s, Arg(a, kw, 0, "chars", null), true, false),
        "rstrip" => (a, kw) => PyStrip(s, Arg(a, kw, 0, "chars", null), false, true),
        "upper" => (_, _) => s.ToUpperInvariant(),
        "lower" => (_, _) => s.ToLowerInvariant(),
        "title" => (_, _) => PyTitle(s),
        "capitalize" => (_, _) => Capitalize(s),
        "swapcase" => (_, _) => string.Concat(s.Select(c => char.IsUpper(c) ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c))),
        "startswith" => (a, kw) => Affix(s, Arg(a, kw, 0, "prefix", null), (x, p) => x.StartsWith(p, StringComparison.Ordinal)),
        "endswith" => (a, kw) => Affix(s, Arg(a, kw, 0, "suffix", null), (x, p) => x.EndsWith(p, StringComparison.Ordinal)),
        "removeprefix" => (a, _) => s.StartsWith(StrArg(a[0], name), StringComparison.Ordinal) ? s[((string)a[0]!).Length..] : s,
        "removesuffix" => (a, _) => ((string)a[0]!).Length > 0 && s.EndsWith(StrArg(a[0], name), StringComparison.Ordinal) ? s[..^((string)a[0]!).Length] : s,
        "split" => (a, kw) => Split(s, Arg(a, kw, 0, "sep", null), JinjaValue.ToLong(Arg(a, kw, 1, "maxsplit", -1L))),
        "splitlines" => (_, _) => JinjaFilters.SplitLines(s).ToList<object?>(),
        "replace" => (a, kw) => Replace(s, StrArg(Arg(a, kw, 0, "old", null), name), StrArg(Arg(a, kw, 1, "new", null), name),
            JinjaValue.ToLong(Arg(a, kw, 2, "count", -1L))),
        "find" => (a, _) => (long)s.IndexOf(StrArg(a[0], name), StringComparison.Ordinal),
        "rfind" => (a, _) => (long)s.LastIndexOf(StrArg(a[0], name), StringComparison.Ordinal),
        "count" => (a, _) => (long)CountOf(s, StrArg(a[0], name)),
        "join" => (a, _) => string.Join(s, JinjaValue.Items(a[0]).Select(x => StrArg(x, name))),
        "isdigit" => (_, _) => s.Length > 0 && s.All(char.IsDigit),
        "isalpha" => (_, _) => s.Length > 0 && s.All(char.IsLetter),
        "isalnum" => (_, _) => s.Length > 0 && s.All(char.IsLetterOrDigit),
        "isspace" => (_, _) => s.Length > 0 && s.All(JinjaLexer.IsPyWhitespace),
        "islower" => (_, _) => s.Any(char.IsLower) && !s.Any(char.IsUpper),
        "isupper" => (_, _) => s.Any(char.IsUpper) && !s.Any(char.IsLower),
        _ => null,
    };

    private static Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?>? DictMethod(JinjaDict d, string name) => name switch
    {
        "get" => (a, kw) => a.Count > 0 && a[0] is not null && d.TryGetValue(a[0]!, out var v) ? v : Arg(a, kw, 1, "default", null),
        "items" => (_, _) => d.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(),
        "keys" => (_, _) => d.Keys.ToList<object?>(),
        "values" => (_, _) => d.Values.ToList(),
        _ => null,
    };

    private static Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?>? ListMethod(IReadOnlyList<object?> l, string name) => name switch
    {
        "count" => (a, _) => (long)l.Count(x => JinjaValue.PyEquals(x, a[0])),
        "index" => (a, _) =>
        {
            for (int i = 0; i < l.Count; i++)
            {
                if (JinjaValue.PyEquals(l[i], a[0]))
                {
                    return (long)i;
                }
            }
            throw new JinjaRenderException($"{JinjaValue.Repr(a[0])} is not in list");
        },
        _ => null,
    };

    public static string PyStrip(string s, object? chars, bool left, bool right)
    {
        Func<char, bool> strip = chars switch
        {
            null => JinjaLexer.IsPyWhitespace,
            string cs => cs.Contains,
            _ => throw new JinjaRenderException($"strip arg must be None or str, not {JinjaValue.TypeName(chars)}"),
        };
        int start = 0, end = s.Length;
        while (left && start < end && strip(s[start]))
        {
            start++;
        }
        while (right && end > start && strip(s[end - 1]))
        {
            end--;
        }
        return s[start..end];
    }

    /// <summary>Python str.title(): a cased letter after an uncased character starts a word.</summary>
    private static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            sb.Append(prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevCased = char.IsLetter(c);
        }
        return sb.ToString();
    }

    public static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    private static bool Affix(string s, object? affix, Func<string, string, bool> test) => affix switch
    {
        string p => test(s, p),
        object?[] t => t.Any(p => test(s, StrArg(p, "startswith/endswith"))),
        _ => throw new JinjaRenderException($"startswith/endswith first arg must be str or a tuple of str, not {JinjaValue.TypeName(affix)}"),
    };

    private static List<object?> Split(string s, object? sep, long maxsplit)
    {
        var parts = new List<object?>();
        if (sep is null)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && JinjaLexer.IsPyWhitespace(s[i]))
                {
                    i++;
                }
                if (i >= s.Length)
                {
                    return parts;
                }
                if (maxsplit >= 0 && parts.Count == maxsplit)
                {
                    parts.Add(JinjaLexer.RStrip(s[i..]));
                    return parts;
                }
                int j = i;
                while (j < s.Length && !JinjaLexer.IsPyWhitespace(s[j]))
                {
                    j++;
                }
                parts.Add(s[i..j]);
                i = j;
            }
        }
        string sp = StrArg(sep, "split");
        if (sp.Length == 0)
        {
            throw new JinjaRenderException("empty separator");
        }
        int pos = 0;
        while (maxsplit < 0 || parts.Count < maxsplit)
        {
            int k = s.IndexOf(sp, pos, StringComparison.Ordinal);
            if (k < 0)
            {
                break;
            }
            parts.Add(s[pos..k]);
            pos = k + sp.Length;
        }
        parts.Add(s[pos..]);
        return parts;
    }

    public static string Replace(string s, string old, string @new, long count)
    {
        if (count < 0)
        {
            return old.Length == 0 ? InsertEverywhere(s, @new) : s.Replace(old, @new, StringComparison.Ordinal);
        }
        var sb = new StringBuilder();
        int pos = 0;
        for (long n = 0; n < count; n++)
        {
            int k = old.Length == 0 ? (pos <= s.Length ? pos : -1) : s.IndexOf(old, pos, StringComparison.Ordinal);
            if (k < 0)
            {
                break;
            }
            sb.Append(s, pos, k - pos).Append(@new);
            if (old.Length == 0)
            {
                if (k < s.Length)
                {
                    sb.Append(s[k]);
                }
                pos = k + 1;
            }
            else
            {
                pos = k + old.Length;
            }
        }
        if (pos < s.Length)
        {
            sb.Append(s, pos, s.Length - pos);
        }
        return sb.ToString();
    }

    private static string InsertEverywhere(string s, string ins) => ins + string.Concat(s.Select(c => c + ins));

    private static int CountOf(string s, string sub)
    {
        if (sub.Length == 0)
        {
            return s.Length + 1;
        }
        int n = 0;
        for (int k = s.IndexOf(sub, StringComparison.Ordinal); k >= 0; k = s.IndexOf(sub, k + sub.Length, StringComparison.Ordinal))
        {
            n++;
        }
        return n;
    }
}

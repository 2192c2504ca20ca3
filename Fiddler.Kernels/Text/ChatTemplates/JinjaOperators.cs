using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>Python semantics of the binary and comparison operators (jinja2 hands them straight to Python).</summary>
internal static class JinjaOperators
{
    public static object? Binary(string op, object? a, object? b)
    {
        if (op == "~")
        {
            return JinjaValue.Str(a) + JinjaValue.Str(b);
        }
        if (a is JinjaUndefined ua)
        {
            throw new JinjaRenderException(ua.Hint);
        }
        if (b is JinjaUndefined ub)
        {
            throw new JinjaRenderException(ub.Hint);
        }
        try
        {
            return (op, a, b) switch
            {
                ("+", string x, string y) => x + y,
                ("+", List<object?> x, List<object?> y) => x.Concat(y).ToList(),
                ("+", object?[] x, object?[] y) => x.Concat(y).ToArray(),
                ("+", string, _) => throw new JinjaRenderException($"can only concatenate str (not \"{JinjaValue.TypeName(b)}\") to str"),
                ("*", string s, _) when b is long or bool => Repeat(s, JinjaValue.ToLong(b)),
                ("*", _, string s) when a is long or bool => Repeat(s, JinjaValue.ToLong(a)),
                ("*", List<object?> l, _) when b is long or bool => Enumerable.Repeat(l, (int)Math.Max(0, JinjaValue.ToLong(b))).SelectMany(x => x).ToList(),
                ("%", string, _) => throw new NotSupportedException("chat template: unsupported printf-style string formatting ('%' on a string)"),
                _ when JinjaValue.IsNumber(a) && JinjaValue.IsNumber(b) => Arithmetic(op, a, b),
                _ => throw new JinjaRenderException(
                    $"unsupported operand type(s) for {op}: '{JinjaValue.TypeName(a)}' and '{JinjaValue.TypeName(b)}'"),
            };
        }
        catch (OverflowException)
        {
            throw new NotSupportedException("chat template: unsupported integer arithmetic beyond 64 bits");
        }
    }

    private static string Repeat(string s, long n) => n <= 0 ? "" : new StringBuilder().Insert(0, s, (int)n).ToString();

    private static object Arithmetic(string op, object? a, object? b)
    {
        bool isFloat = a is double || b is double;
        if (op == "/")
        {
            double divisor = JinjaValue.ToDouble(b);
            return divisor == 0 ? throw new JinjaRenderException("division by zero") : JinjaValue.ToDouble(a) / divisor;
        }
        if (isFloat)
        {
            double x = JinjaValue.ToDouble(a), y = JinjaValue.ToDouble(b);
            return op switch
            {
                "+" => x + y,
                "-" => x - y,
                "*" => x * y,
                "**" => Math.Pow(x, y),
                "//" => y == 0 ? throw new JinjaRenderException("float floor division by zero") : Math.Floor(x / y),
                "%" => y == 0 ? throw new JinjaRenderException("float modulo") : x - y * Math.Floor(x / y),
                _ => throw new JinjaRenderException($"unknown operator {op}"),
            };
        }
        long p = JinjaValue.ToLong(a), q = JinjaValue.ToLong(b);
        return op switch
        {
            "+" => (object)checked(p + q),
            "-" => checked(p - q),
            "*" => checked(p * q),
            "**" => q < 0 ? Math.Pow(p, q) : (object)checked(IntPow(p, q)),
            "//" => q == 0 ? throw new JinjaRenderException("integer division or modulo by zero") : FloorDiv(p, q),
            "%" => q == 0 ? throw new JinjaRenderException("integer division or modulo by zero") : p - q * FloorDiv(p, q),
            _ => throw new JinjaRenderException($"unknown operator {op}"),
        };
    }

    private static long FloorDiv(long p, long q)
    {
        long d = p / q;
        return (p % q != 0 && ((p < 0) != (q < 0))) ? d - 1 : d;
    }

    private static long IntPow(long b, long e)
    {
        long r = 1;
        for (long i = 0; i < e; i++)
        {
            r = checked(r * b);
        }
        return r;
    }

    public static bool Compare(string op, object? a, object? b) => op switch
    {
        "==" => JinjaValue.PyEquals(a, b),
        "!=" => !JinjaValue.PyEquals(a, b),
        "in" => Contains(b, a),
        "notin" => !Contains(b, a),
        "<" => JinjaValue.Compare(a, b, op) < 0,
        "<=" => JinjaValue.Compare(a, b, op) <= 0,
        ">" => JinjaValue.Compare(a, b, op) > 0,
        ">=" => JinjaValue.Compare(a, b, op) >= 0,
        _ => throw new JinjaRenderException($"unknown comparison {op}"),
    };

    public static bool Contains(object? container, object? item) => container switch
    {
        string s when item is string sub => s.Contains(sub, StringComparison.Ordinal),
        string => throw new JinjaRenderException($"'in <string>' requires string as left operand, not {JinjaValue.TypeName(item)}"),
        JinjaDict d => item is not null && d.ContainsKey(item),
        JinjaUndefined => false,
        List<object?> or object?[] => JinjaValue.Items(container).Any(x => JinjaValue.PyEquals(x, item)),
        _ => throw new JinjaRenderException($"argument of type '{JinjaValue.TypeName(container)}' is not iterable"),
    };
}

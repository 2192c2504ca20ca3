using System.Globalization;
using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>
/// Python's json.dumps as transformers' tojson filter calls it (ensure_ascii=False by default, no HTML escaping;
/// separators ", " / ": ", or "," / ": " once an indent is given).
/// </summary>
internal static class JinjaJson
{
    public static string Dumps(object? value, object? ensureAscii, object? indent, object? separators, bool sortKeys)
    {
        string? indentUnit = indent switch
        {
            null => null,
            string s => s,
            long or bool => new string(' ', (int)Math.Max(0, JinjaValue.ToLong(indent))),
            _ => throw new JinjaRenderException($"tojson indent must be an int or str, not {JinjaValue.TypeName(indent)}"),
        };
        string itemSep = indentUnit is null ? ", " : ",", keySep = ": ";
        if (separators is not null)
        {
            var seps = JinjaValue.Items(separators);
            if (seps.Count != 2 || seps[0] is not string a || seps[1] is not string b)
            {
                throw new JinjaRenderException("tojson separators must be a pair of strings");
            }
            (itemSep, keySep) = (a, b);
        }
        var sb = new StringBuilder();
        new Writer(sb, JinjaValue.Truthy(ensureAscii), indentUnit, itemSep, keySep, sortKeys).Write(value, 0);
        return sb.ToString();
    }

    private sealed class Writer(StringBuilder sb, bool ascii, string? indent, string itemSep, string keySep, bool sortKeys)
    {
        public void Write(object? v, int depth)
        {
            switch (v)
            {
                case null:
                    sb.Append("null");
                    break;
                case bool b:
                    sb.Append(b ? "true" : "false");
                    break;
                case long l:
                    sb.Append(l.ToString(CultureInfo.InvariantCulture));
                    break;
                case double d:
                    sb.Append(Float(d));
                    break;
                case string s:
                    WriteString(s);
                    break;
                case List<object?> or object?[]:
                    var items = JinjaValue.Items(v);
                    if (items.Count == 0)
                    {
                        sb.Append("[]");
                        break;
                    }
                    sb.Append('[');
                    for (int i = 0; i < items.Count; i++)
                    {
                        Separator(i, depth + 1);
                        Write(items[i], depth + 1);
                    }
                    Close(depth).Append(']');
                    break;
                case JinjaDict dict:
                    if (dict.Count == 0)
                    {
                        sb.Append("{}");
                        break;
                    }
                    var pairs = dict.Select(kv => (Key: Key(kv.Key), kv.Value)).ToList();
                    if (sortKeys)
                    {
                        pairs = pairs.OrderBy(p => p.Key, StringComparer.Ordinal).ToList();
                    }
                    sb.Append('{');
                    for (int i = 0; i < pairs.Count; i++)
                    {
                        Separator(i, depth + 1);
                        WriteString(pairs[i].Key);
                        sb.Append(keySep);
                        Write(pairs[i].Value, depth + 1);
                    }
                    Close(depth).Append('}');
                    break;
                default:
                    throw new JinjaRenderException($"Object of type {JinjaValue.TypeName(v)} is not JSON serializable");
            }
        }

        private void Separator(int i, int depth)
        {
            if (i > 0)
            {
                sb.Append(itemSep);
            }
            if (indent is not null)
            {
                sb.Append('\n').Insert(sb.Length, indent, depth);
            }
        }

        private StringBuilder Close(int depth) => indent is null ? sb : sb.Append('\n').Insert(sb.Length, indent, depth);

        private static string Key(object k) => k switch
        {
            string s => s,
            bool b => b ? "true" : "false",
            long l => l.ToString(CultureInfo.InvariantCulture),
            double d => Float(d),
            _ => throw new JinjaRenderException($"keys must be str, int, float, bool or None, not {JinjaValue.TypeName(k)}"),
        };

        private static string Float(double d) =>
            double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : JinjaValue.FloatRepr(d);

        private void WriteString(string s)
        {
            sb.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    case '\b': sb.Append("\\b"); break;
                    case '\f': sb.Append("\\f"); break;
                    case < ' ':
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        break;
                    case > '~' when ascii:
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        break;
                    default:
                        sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }
    }
}

using System.Globalization;
using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>Positions and the two kinds of load-time failure: not Jinja at all, or Jinja this interpreter lacks.</summary>
internal static class JinjaSyntax
{
    public static string Where(string source, int offset)
    {
        offset = Math.Clamp(offset, 0, source.Length);
        int line = 1, lineStart = 0;
        for (int i = 0; i < offset; i++)
        {
            if (source[i] == '\n')
            {
                line++;
                lineStart = i + 1;
            }
        }
        return $"line {line} col {offset - lineStart + 1}";
    }

    public static InvalidDataException Error(string source, int offset, string message) =>
        new($"chat template: syntax error: {message} at {Where(source, offset)}");

    public static NotSupportedException Unsupported(string source, int offset, string what) =>
        new($"chat template: unsupported {what} at {Where(source, offset)}");
}

/// <summary>The backslash escapes of a Jinja string literal (jinja2 decodes them with Python's "unicode-escape").</summary>
internal static class JinjaEscapes
{
    /// <summary>Decodes the escape whose backslash precedes <paramref name="pos"/>; returns the position after it.</summary>
    public static int Decode(string s, int pos, StringBuilder sb, Func<string, Exception> error)
    {
        char c = s[pos++];
        switch (c)
        {
            case '\n': return pos;
            case '\\': sb.Append('\\'); return pos;
            case '\'': sb.Append('\''); return pos;
            case '"': sb.Append('"'); return pos;
            case 'a': sb.Append('\a'); return pos;
            case 'b': sb.Append('\b'); return pos;
            case 'f': sb.Append('\f'); return pos;
            case 'n': sb.Append('\n'); return pos;
            case 'r': sb.Append('\r'); return pos;
            case 't': sb.Append('\t'); return pos;
            case 'v': sb.Append('\v'); return pos;
            case 'x': return Hex(s, pos, 2, sb, error);
            case 'u': return Hex(s, pos, 4, sb, error);
            case 'U': return Hex(s, pos, 8, sb, error);
            case >= '0' and <= '7':
                int value = c - '0', n = 1;
                while (n < 3 && pos < s.Length && s[pos] is >= '0' and <= '7')
                {
                    value = value * 8 + (s[pos++] - '0');
                    n++;
                }
                sb.Append((char)value);
                return pos;
            case 'N':
                throw new NotSupportedException("chat template: unsupported \\N{...} escape in a string literal");
            default:
                // Python keeps unknown escapes as written.
                sb.Append('\\').Append(c);
                return pos;
        }
    }

    private static int Hex(string s, int pos, int digits, StringBuilder sb, Func<string, Exception> error)
    {
        if (pos + digits > s.Length || !int.TryParse(s.AsSpan(pos, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int cp)
            || s.AsSpan(pos, digits).ContainsAny('+', '-'))
        {
            throw error($"truncated \\{(digits == 2 ? 'x' : digits == 4 ? 'u' : 'U')} escape in a string literal");
        }
        if (cp > 0x10FFFF)
        {
            throw error("\\U escape beyond U+10FFFF in a string literal");
        }
        // Python allows lone surrogates; .NET strings can hold them too.
        if (cp is >= 0xD800 and <= 0xDFFF)
        {
            sb.Append((char)cp);
        }
        else
        {
            sb.Append(char.ConvertFromUtf32(cp));
        }
        return pos + digits;
    }
}

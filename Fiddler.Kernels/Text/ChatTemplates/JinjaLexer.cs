namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>
/// Splits a template into data and tag tokens the way jinja2's lexer does with trim_blocks and lstrip_blocks on:
/// "\r\n"/"\r" become "\n", one trailing newline is dropped, <c>-</c> strips all whitespace on its side,
/// lstrip removes the spaces before a block or comment tag that starts its line, trim removes one newline after
/// a block or comment end, and <c>+</c> turns either off. Comments vanish here; <c>raw</c> blocks become data.
/// </summary>
internal sealed partial class JinjaLexer
{
    private readonly string _src;
    private readonly List<Token> _tokens = [];
    private int _pos;
    private bool _lineStarting = true;

    private JinjaLexer(string source)
    {
        string normalized = source.Replace("\r\n", "\n").Replace('\r', '\n');
        _src = normalized.EndsWith('\n') ? normalized[..^1] : normalized;
    }

    public string Source => _src;

    public static (List<Token> Tokens, string Source) Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return (lexer._tokens, lexer._src);
    }

    private void Run()
    {
        while (_pos < _src.Length)
        {
            int tag = FindTagStart(_pos);
            if (tag < 0)
            {
                Emit(TokenKind.Data, _src[_pos..], _pos);
                break;
            }
            char kind = _src[tag + 1];
            char sign = tag + 2 < _src.Length && _src[tag + 2] is '-' or '+' ? _src[tag + 2] : '\0';
            string text = StripBeforeTag(_src[_pos..tag], sign, isVariable: kind == '{');
            if (text.Length > 0)
            {
                Emit(TokenKind.Data, text, _pos);
            }
            _pos = tag + 2 + (sign == '\0' ? 0 : 1);
            switch (kind)
            {
                case '#':
                    LexComment(tag);
                    break;
                case '{':
                    Emit(TokenKind.VarBegin, "{{", tag);
                    LexExpression(tag, block: false);
                    break;
                default:
                    if (TryLexRaw(tag))
                    {
                        break;
                    }
                    Emit(TokenKind.BlockBegin, "{%", tag);
                    LexExpression(tag, block: true);
                    break;
            }
        }
        Emit(TokenKind.Eof, "", _src.Length);
    }

    private int FindTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
        {
            if (_src[i + 1] is '{' or '%' or '#')
            {
                return i;
            }
        }
        return -1;
    }

    // jinja2 lexer.py tokeniter: "-" rstrips the text; otherwise lstrip_blocks removes a whitespace-only tail
    // that begins a line (for blocks and comments, never for {{ }}).
    private string StripBeforeTag(string text, char sign, bool isVariable)
    {
        if (sign == '-')
        {
            return RStrip(text);
        }
        if (sign == '+' || isVariable)
        {
            return text;
        }
        int lineStart = text.LastIndexOf('\n') + 1;
        if ((lineStart > 0 || _lineStarting) && lineStart < text.Length && AllWhitespace(text, lineStart))
        {
            return text[..lineStart];
        }
        return text;
    }

    private void LexComment(int tagStart)
    {
        int end = _src.IndexOf("#}", _pos, StringComparison.Ordinal);
        if (end < 0)
        {
            throw Error(tagStart, "comment is not closed with '#}'");
        }
        char sign = _src[end - 1] is '-' or '+' && end - 1 >= _pos ? _src[end - 1] : '\0';
        _pos = end + 2;
        AfterTagEnd(sign);
    }

    // {% raw %}...{% endraw %}: the body is data, with the usual whitespace control on both tags.
    private bool TryLexRaw(int tagStart)
    {
        int p = SkipWs(_pos);
        if (!MatchWord(p, "raw"))
        {
            return false;
        }
        p = SkipWs(p + 3);
        char sign = '\0';
        if (p < _src.Length && _src[p] is '-' or '+')
        {
            sign = _src[p++];
        }
        if (!Matches(p, "%}"))
        {
            return false;
        }
        _pos = p + 2;
        AfterTagEnd(sign);
        for (int i = FindTagStart(_pos); i >= 0; i = FindTagStart(i + 1))
        {
            if (_src[i + 1] != '%')
            {
                continue;
            }
            int q = i + 2;
            char open = q < _src.Length && _src[q] is '-' or '+' ? _src[q++] : '\0';
            q = SkipWs(q);
            if (!MatchWord(q, "endraw"))
            {
                continue;
            }
            q = SkipWs(q + 6);
            char close = q < _src.Length && _src[q] is '-' or '+' ? _src[q++] : '\0';
            if (!Matches(q, "%}"))
            {
                continue;
            }
            string body = StripBeforeTag(_src[_pos..i], open, isVariable: false);
            if (body.Length > 0)
            {
                Emit(TokenKind.Data, body, _pos);
            }
            _pos = q + 2;
            AfterTagEnd(close);
            return true;
        }
        throw Error(tagStart, "missing '{% endraw %}'");
    }

    private void LexExpression(int tagStart, bool block)
    {
        string close = block ? "%}" : "}}";
        var balance = new Stack<char>();
        while (true)
        {
            _pos = SkipWs(_pos);
            if (_pos >= _src.Length)
            {
                throw Error(tagStart, $"tag is not closed with '{close}'");
            }
            if (balance.Count == 0)
            {
                char sign = _src[_pos] is '-' or '+' ? _src[_pos] : '\0';
                int at = _pos + (sign == '\0' ? 0 : 1);
                if (Matches(at, close) && (block || sign != '+'))
                {
                    Emit(block ? TokenKind.BlockEnd : TokenKind.VarEnd, close, _pos);
                    _pos = at + 2;
                    if (block)
                    {
                        AfterTagEnd(sign);
                    }
                    else
                    {
                        if (sign == '-')
                        {
                            _pos = SkipWs(_pos);
                        }
                        _lineStarting = _pos > 0 && _src[_pos - 1] == '\n' && sign == '-';
                    }
                    return;
                }
            }
            LexOne(balance);
        }
    }

    // After %} or #}: "-" eats all following whitespace; otherwise trim_blocks eats one newline (not after "+").
    private void AfterTagEnd(char sign)
    {
        int start = _pos;
        if (sign == '-')
        {
            _pos = SkipWs(_pos);
        }
        else if (sign != '+' && _pos < _src.Length && _src[_pos] == '\n')
        {
            _pos++;
        }
        _lineStarting = _pos > start && _src[_pos - 1] == '\n';
    }

    private void Emit(TokenKind kind, string value, int offset) => _tokens.Add(new Token(kind, value, offset));

    private int SkipWs(int p)
    {
        while (p < _src.Length && IsPyWhitespace(_src[p]))
        {
            p++;
        }
        return p;
    }

    private bool Matches(int p, string s) => string.CompareOrdinal(_src, p, s, 0, s.Length) == 0 && p + s.Length <= _src.Length;

    private bool MatchWord(int p, string word) =>
        Matches(p, word) && (p + word.Length >= _src.Length || !(char.IsLetterOrDigit(_src[p + word.Length]) || _src[p + word.Length] == '_'));

    private string Where(int offset) => JinjaSyntax.Where(_src, offset);

    private InvalidDataException Error(int offset, string message) => JinjaSyntax.Error(_src, offset, message);

    /// <summary>Python's str.isspace (what jinja2's \s and rstrip use): char.IsWhiteSpace plus U+001C..U+001F.</summary>
    public static bool IsPyWhitespace(char c) => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f';

    public static string RStrip(string s)
    {
        int end = s.Length;
        while (end > 0 && IsPyWhitespace(s[end - 1]))
        {
            end--;
        }
        return s[..end];
    }

    private static bool AllWhitespace(string s, int from)
    {
        for (int i = from; i < s.Length; i++)
        {
            if (!IsPyWhitespace(s[i]))
            {
                return false;
            }
        }
        return true;
    }
}

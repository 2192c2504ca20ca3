using System.Globalization;
using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

// Inside {{ }} and {% %}: one name, number, string or operator token at a time; brackets are balanced here
// so LexExpression knows a '}}' or '%}' inside a dict display is not the tag's end.
internal sealed partial class JinjaLexer
{
    private static readonly string[] Operators =
        ["//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"];

    private void LexOne(Stack<char> balance)
    {
        int start = _pos;
        char c = _src[_pos];
        if (char.IsLetter(c) || c == '_')
        {
            while (_pos < _src.Length && (char.IsLetterOrDigit(_src[_pos]) || _src[_pos] == '_'))
            {
                _pos++;
            }
            Emit(TokenKind.Name, _src[start.._pos], start);
        }
        else if (char.IsAsciiDigit(c))
        {
            LexNumber(start);
        }
        else if (c is '\'' or '"')
        {
            LexString(start, c);
        }
        else
        {
            string? op = Operators.FirstOrDefault(o => Matches(_pos, o));
            if (op is null)
            {
                throw Error(start, $"unexpected character '{c}'");
            }
            if (op is "(" or "[" or "{")
            {
                balance.Push(op[0]);
            }
            else if (op is ")" or "]" or "}")
            {
                char expected = op == ")" ? '(' : op == "]" ? '[' : '{';
                if (balance.Count == 0 || balance.Pop() != expected)
                {
                    throw Error(start, $"unexpected '{op}'");
                }
            }
            _pos += op.Length;
            Emit(TokenKind.Operator, op, start);
        }
    }

    private void LexNumber(int start)
    {
        ScanDigits();
        bool isFloat = false;
        if (_pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]))
        {
            _pos++;
            ScanDigits();
            isFloat = true;
        }
        if (_pos < _src.Length && _src[_pos] is 'e' or 'E')
        {
            int save = _pos++;
            if (_pos < _src.Length && _src[_pos] is '+' or '-')
            {
                _pos++;
            }
            if (_pos < _src.Length && char.IsAsciiDigit(_src[_pos]))
            {
                ScanDigits();
                isFloat = true;
            }
            else
            {
                _pos = save;
            }
        }
        string text = _src[start.._pos].Replace("_", "");
        object value = isFloat
            ? (object)double.Parse(text, CultureInfo.InvariantCulture)
            : long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long l)
                ? (object)l
                : throw new NotSupportedException($"chat template: unsupported integer literal {text} (beyond 64 bits) at {Where(start)}");
        _tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, text, start) { Number = value });
    }

    private void ScanDigits()
    {
        while (_pos < _src.Length && (char.IsAsciiDigit(_src[_pos]) || (_src[_pos] == '_' && _pos + 1 < _src.Length && char.IsAsciiDigit(_src[_pos + 1]))))
        {
            _pos++;
        }
    }

    private void LexString(int start, char quote)
    {
        var sb = new StringBuilder();
        _pos++;
        while (true)
        {
            if (_pos >= _src.Length)
            {
                throw Error(start, "string literal is not closed");
            }
            char c = _src[_pos++];
            if (c == quote)
            {
                break;
            }
            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }
            if (_pos >= _src.Length)
            {
                throw Error(start, "string literal is not closed");
            }
            _pos = JinjaEscapes.Decode(_src, _pos, sb, msg => Error(start, msg));
        }
        Emit(TokenKind.String, sb.ToString(), start);
    }
}

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>
/// Recursive-descent parser for the Jinja2 subset chat templates use, following jinja2/parser.py rule for rule
/// (so precedence matches: filters and tests bind tighter than arithmetic, "~" sits between + and *).
/// Valid Jinja this interpreter cannot run fails here with <see cref="NotSupportedException"/>.
/// </summary>
internal sealed partial class JinjaParser
{
    private readonly List<Token> _tokens;
    private readonly string _src;
    private int _i;

    private JinjaParser(List<Token> tokens, string source)
    {
        _tokens = tokens;
        _src = source;
    }

    public static IReadOnlyList<Node> Parse(string source, out string normalizedSource)
    {
        var (tokens, src) = JinjaLexer.Tokenize(source);
        normalizedSource = src;
        var parser = new JinjaParser(tokens, src);
        var body = parser.Subparse([], out _);
        return body;
    }

    private Token Current => _tokens[_i];

    private Token Look => _tokens[Math.Min(_i + 1, _tokens.Count - 1)];

    private Token Next() => _tokens[_i++];

    private bool IsOp(string op) => Current.Kind == TokenKind.Operator && Current.Value == op;

    private bool IsName(string name) => Current.Kind == TokenKind.Name && Current.Value == name;

    private bool SkipOp(string op)
    {
        if (!IsOp(op))
        {
            return false;
        }
        _i++;
        return true;
    }

    private bool SkipName(string name)
    {
        if (!IsName(name))
        {
            return false;
        }
        _i++;
        return true;
    }

    private Token Expect(TokenKind kind, string? value = null)
    {
        if (Current.Kind != kind || (value is not null && Current.Value != value))
        {
            string wanted = value is not null ? $"'{value}'" : kind.ToString().ToLowerInvariant();
            throw Fail($"expected {wanted}, got {Current}");
        }
        return Next();
    }

    private InvalidDataException Fail(string message, int? offset = null) => JinjaSyntax.Error(_src, offset ?? Current.Offset, message);

    /// <summary>Nesting deep enough to exhaust the stack (thousands of parentheses) is a template error, not a crash.</summary>
    private void EnsureStack()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Fail("the template nests too deeply");
    }

    private NotSupportedException Unsupported(string what, int offset) => JinjaSyntax.Unsupported(_src, offset, what);
}

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>
/// Recursive-descent parser for the Jinja2 subset chat templates use, following jinja2/parser.py rule for rule
/// (so precedence matches: filters and tests bind tighter than arithmetic, "~" sits between + and *).
/// Valid Jinja this interpreter cannot run fails here with <see cref="NotSupportedException"/>.
/// </summary>
internal sealed class JinjaParser
{
    private static readonly HashSet<string> UnsupportedTags =
        ["block", "extends", "include", "import", "from", "call", "filter", "with", "autoescape", "do", "trans", "print"];

    private static readonly HashSet<string> UnsupportedGlobals = ["cycler", "joiner", "lipsum"];

    private static readonly HashSet<string> CompareOps = ["==", "!=", "<", "<=", ">", ">="];

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

    private NotSupportedException Unsupported(string what, int offset) => JinjaSyntax.Unsupported(_src, offset, what);

    // ---- statements ----

    /// <summary>Parses nodes until a block tag named in <paramref name="endTags"/>; leaves the stream after that name.</summary>
    private List<Node> Subparse(HashSet<string> endTags, out string endTag)
    {
        var body = new List<Node>();
        while (true)
        {
            var tok = Current;
            switch (tok.Kind)
            {
                case TokenKind.Data:
                    body.Add(new TextNode(tok.Offset, tok.Value));
                    _i++;
                    break;
                case TokenKind.VarBegin:
                    _i++;
                    body.Add(new OutputNode(tok.Offset, ParseTuple(withCondExpr: true)));
                    Expect(TokenKind.VarEnd);
                    break;
                case TokenKind.BlockBegin:
                    _i++;
                    if (Current.Kind == TokenKind.Name && endTags.Contains(Current.Value))
                    {
                        endTag = Next().Value;
                        return body;
                    }
                    body.Add(ParseStatement());
                    break;
                case TokenKind.Eof:
                    if (endTags.Count > 0)
                    {
                        throw Fail($"unexpected end of template, expected {string.Join(" or ", endTags.Select(t => $"'{t}'"))}");
                    }
                    endTag = "";
                    return body;
                default:
                    throw Fail($"unexpected {tok}");
            }
        }
    }

    private Node ParseStatement()
    {
        var tok = Current;
        if (tok.Kind != TokenKind.Name)
        {
            throw Fail("tag name expected");
        }
        if (UnsupportedTags.Contains(tok.Value))
        {
            throw Unsupported($"tag '{tok.Value}'", tok.Offset);
        }
        _i++;
        Node node = tok.Value switch
        {
            "if" => ParseIf(tok.Offset),
            "for" => ParseFor(tok.Offset),
            "set" => ParseSet(tok.Offset),
            "macro" => ParseMacro(tok.Offset),
            "break" or "continue" => new LoopControlNode(tok.Offset, tok.Value == "break"),
            // transformers' AssistantTracker extension: {% generation %} only marks assistant text.
            "generation" => ParseGeneration(tok.Offset),
            _ => throw Fail($"encountered unknown tag '{tok.Value}'", tok.Offset),
        };
        if (node is SetNode or LoopControlNode)
        {
            Expect(TokenKind.BlockEnd);
        }
        return node;
    }

    private Node ParseGeneration(int pos)
    {
        Expect(TokenKind.BlockEnd);
        var body = Subparse(["endgeneration"], out _);
        return new IfNode(pos, [(new ConstExpr(pos, true), body)], []);
    }

    private IfNode ParseIf(int pos)
    {
        var branches = new List<(Expr, IReadOnlyList<Node>)>();
        IReadOnlyList<Node> elseBody = [];
        var test = ParseTuple(withCondExpr: false);
        while (true)
        {
            Expect(TokenKind.BlockEnd);
            var body = Subparse(["elif", "else", "endif"], out string end);
            branches.Add((test, body));
            if (end == "elif")
            {
                test = ParseTuple(withCondExpr: false);
                continue;
            }
            if (end == "else")
            {
                Expect(TokenKind.BlockEnd);
                elseBody = Subparse(["endif"], out _);
            }
            Expect(TokenKind.BlockEnd);
            return new IfNode(pos, branches, elseBody);
        }
    }

    private ForNode ParseFor(int pos)
    {
        var target = ParseAssignTarget(withNamespace: false, endName: "in");
        Expect(TokenKind.Name, "in");
        var iter = ParseTuple(withCondExpr: false, endName: "recursive");
        Expr? filter = SkipName("if") ? ParseExpression() : null;
        if (IsName("recursive"))
        {
            throw Unsupported("recursive for loop", Current.Offset);
        }
        Expect(TokenKind.BlockEnd);
        var body = Subparse(["endfor", "else"], out string end);
        IReadOnlyList<Node> elseBody = [];
        if (end == "else")
        {
            Expect(TokenKind.BlockEnd);
            elseBody = Subparse(["endfor"], out _);
        }
        Expect(TokenKind.BlockEnd);
        return new ForNode(pos, target, iter, filter, body, elseBody);
    }

    private Node ParseSet(int pos)
    {
        var target = ParseAssignTarget(withNamespace: true, endName: null);
        if (SkipOp("="))
        {
            return new SetNode(pos, target, ParseTuple(withCondExpr: true));
        }
        if (IsOp("|"))
        {
            throw Unsupported("filter on a {% set %} block", Current.Offset);
        }
        Expect(TokenKind.BlockEnd);
        var body = Subparse(["endset"], out _);
        Expect(TokenKind.BlockEnd);
        return new SetBlockNode(pos, target, body);
    }

    private MacroNode ParseMacro(int pos)
    {
        string name = Expect(TokenKind.Name).Value;
        var names = new List<string>();
        var defaults = new List<Expr?>();
        Expect(TokenKind.Operator, "(");
        while (!IsOp(")"))
        {
            if (names.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            var arg = Expect(TokenKind.Name);
            names.Add(arg.Value);
            if (SkipOp("="))
            {
                defaults.Add(ParseExpression());
            }
            else if (defaults.Any(d => d is not null))
            {
                throw Fail("non-default argument follows default argument", arg.Offset);
            }
            else
            {
                defaults.Add(null);
            }
        }
        Expect(TokenKind.Operator, ")");
        Expect(TokenKind.BlockEnd);
        var body = Subparse(["endmacro"], out _);
        Expect(TokenKind.BlockEnd);
        return new MacroNode(pos, name, names, defaults, body);
    }

    private Target ParseAssignTarget(bool withNamespace, string? endName)
    {
        if (withNamespace && Current.Kind == TokenKind.Name && Look.Kind == TokenKind.Operator && Look.Value == ".")
        {
            var ns = Next();
            _i++;
            return new AttrTarget(ns.Offset, ns.Value, Expect(TokenKind.Name).Value);
        }
        int pos = Current.Offset;
        var items = new List<Target>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            if (IsTupleEnd(endName) || IsOp("="))
            {
                break;
            }
            var name = Expect(TokenKind.Name);
            if (name.Value is "true" or "false" or "none" or "True" or "False" or "None")
            {
                throw Fail($"can't assign to '{name.Value}'", name.Offset);
            }
            items.Add(new NameTarget(name.Offset, name.Value));
            if (!IsOp(","))
            {
                break;
            }
            isTuple = true;
        }
        if (items.Count == 0)
        {
            throw Fail("expected an assignment target");
        }
        return isTuple ? new TupleTarget(pos, items) : items[0];
    }

    // ---- expressions ----

    private bool IsTupleEnd(string? endName) =>
        Current.Kind is TokenKind.VarEnd or TokenKind.BlockEnd || IsOp(")") || (endName is not null && IsName(endName));

    private Expr ParseTuple(bool withCondExpr, string? endName = null, bool explicitParens = false)
    {
        int pos = Current.Offset;
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            if (IsTupleEnd(endName))
            {
                break;
            }
            items.Add(withCondExpr ? ParseExpression() : ParseOr());
            if (!IsOp(","))
            {
                break;
            }
            isTuple = true;
        }
        if (!isTuple)
        {
            if (items.Count > 0)
            {
                return items[0];
            }
            if (!explicitParens)
            {
                throw Fail($"expected an expression, got {Current}");
            }
        }
        return new ListExpr(pos, items, IsTuple: true);
    }

    private Expr ParseExpression() => ParseCondExpr();

    private Expr ParseCondExpr()
    {
        var expr = ParseOr();
        while (IsName("if"))
        {
            int pos = Next().Offset;
            var test = ParseOr();
            Expr? otherwise = SkipName("else") ? ParseCondExpr() : null;
            expr = new CondExpr(pos, test, expr, otherwise);
        }
        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (IsName("or"))
        {
            int pos = Next().Offset;
            left = new BinaryExpr(pos, "or", left, ParseAnd());
        }
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (IsName("and"))
        {
            int pos = Next().Offset;
            left = new BinaryExpr(pos, "and", left, ParseNot());
        }
        return left;
    }

    private Expr ParseNot()
    {
        if (IsName("not"))
        {
            int pos = Next().Offset;
            return new UnaryExpr(pos, "not", ParseNot());
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        int pos = Current.Offset;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Operator && CompareOps.Contains(Current.Value))
            {
                rest.Add((Next().Value, ParseMath1()));
            }
            else if (SkipName("in"))
            {
                rest.Add(("in", ParseMath1()));
            }
            else if (IsName("not") && Look.Kind == TokenKind.Name && Look.Value == "in")
            {
                _i += 2;
                rest.Add(("notin", ParseMath1()));
            }
            else
            {
                break;
            }
        }
        return rest.Count == 0 ? first : new CompareExpr(pos, first, rest);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (IsOp("+") || IsOp("-"))
        {
            var op = Next();
            left = new BinaryExpr(op.Offset, op.Value, left, ParseConcat());
        }
        return left;
    }

    private Expr ParseConcat()
    {
        var left = ParseMath2();
        while (IsOp("~"))
        {
            var op = Next();
            left = new BinaryExpr(op.Offset, "~", left, ParseMath2());
        }
        return left;
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%"))
        {
            var op = Next();
            left = new BinaryExpr(op.Offset, op.Value, left, ParsePow());
        }
        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary(withFilter: true);
        while (IsOp("**"))
        {
            var op = Next();
            left = new BinaryExpr(op.Offset, "**", left, ParseUnary(withFilter: true));
        }
        return left;
    }

    private Expr ParseUnary(bool withFilter)
    {
        Expr node;
        if (IsOp("-") || IsOp("+"))
        {
            var op = Next();
            node = new UnaryExpr(op.Offset, op.Value, ParseUnary(withFilter: false));
        }
        else
        {
            node = ParsePrimary();
        }
        node = ParsePostfix(node);
        return withFilter ? ParseFilterExpr(node) : node;
    }

    private Expr ParsePrimary()
    {
        var tok = Current;
        switch (tok.Kind)
        {
            case TokenKind.Name:
                _i++;
                switch (tok.Value)
                {
                    case "true" or "True":
                        return new ConstExpr(tok.Offset, true);
                    case "false" or "False":
                        return new ConstExpr(tok.Offset, false);
                    case "none" or "None":
                        return new ConstExpr(tok.Offset, null);
                }
                if (UnsupportedGlobals.Contains(tok.Value))
                {
                    throw Unsupported($"global '{tok.Value}'", tok.Offset);
                }
                return new NameExpr(tok.Offset, tok.Value);
            case TokenKind.String:
                string s = Next().Value;
                while (Current.Kind == TokenKind.String)
                {
                    s += Next().Value;
                }
                return new ConstExpr(tok.Offset, s);
            case TokenKind.Integer or TokenKind.Float:
                _i++;
                return new ConstExpr(tok.Offset, tok.Number);
            case TokenKind.Operator when tok.Value == "(":
                _i++;
                var inner = ParseTuple(withCondExpr: true, explicitParens: true);
                Expect(TokenKind.Operator, ")");
                return inner;
            case TokenKind.Operator when tok.Value == "[":
                return ParseList();
            case TokenKind.Operator when tok.Value == "{":
                return ParseDict();
            default:
                throw Fail($"unexpected {tok}");
        }
    }

    private ListExpr ParseList()
    {
        int pos = Next().Offset;
        var items = new List<Expr>();
        while (!IsOp("]"))
        {
            if (items.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            if (IsOp("]"))
            {
                break;
            }
            items.Add(ParseExpression());
        }
        Expect(TokenKind.Operator, "]");
        return new ListExpr(pos, items, IsTuple: false);
    }

    private DictExpr ParseDict()
    {
        int pos = Next().Offset;
        var items = new List<(Expr, Expr)>();
        while (!IsOp("}"))
        {
            if (items.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            if (IsOp("}"))
            {
                break;
            }
            var key = ParseExpression();
            Expect(TokenKind.Operator, ":");
            items.Add((key, ParseExpression()));
        }
        Expect(TokenKind.Operator, "}");
        return new DictExpr(pos, items);
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            if (IsOp(".") || IsOp("["))
            {
                node = ParseSubscript(node);
            }
            else if (IsOp("("))
            {
                node = ParseCall(node);
            }
            else
            {
                return node;
            }
        }
    }

    private Expr ParseFilterExpr(Expr node)
    {
        while (true)
        {
            if (IsOp("|"))
            {
                node = ParseFilter(node);
            }
            else if (IsName("is"))
            {
                node = ParseTest(node);
            }
            else if (IsOp("("))
            {
                node = ParseCall(node);
            }
            else
            {
                return node;
            }
        }
    }

    private Expr ParseSubscript(Expr node)
    {
        var tok = Next();
        if (tok.Value == ".")
        {
            var attr = Next();
            return attr.Kind switch
            {
                TokenKind.Name => new AttrExpr(tok.Offset, node, attr.Value),
                TokenKind.Integer => new ItemExpr(tok.Offset, node, new ConstExpr(attr.Offset, attr.Number)),
                _ => throw Fail("expected name or number", attr.Offset),
            };
        }
        var args = new List<Expr>();
        while (!IsOp("]"))
        {
            if (args.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
            }
            args.Add(ParseSubscribed(node, tok.Offset));
        }
        Expect(TokenKind.Operator, "]");
        if (args.Count == 1)
        {
            return args[0] is SliceExpr slice ? slice : new ItemExpr(tok.Offset, node, args[0]);
        }
        throw Unsupported("multi-dimensional subscript", tok.Offset);
    }

    // Returns either the key expression or a SliceExpr already bound to obj.
    private Expr ParseSubscribed(Expr obj, int pos)
    {
        Expr? start = null;
        if (!IsOp(":"))
        {
            start = ParseExpression();
            if (!IsOp(":"))
            {
                return start;
            }
        }
        _i++;
        Expr? stop = IsOp(":") || IsOp("]") || IsOp(",") ? null : ParseExpression();
        Expr? step = null;
        if (SkipOp(":"))
        {
            step = IsOp("]") || IsOp(",") ? null : ParseExpression();
        }
        return new SliceExpr(pos, obj, start, stop, step);
    }

    private CallExpr ParseCall(Expr fn)
    {
        int pos = Current.Offset;
        var (args, kwargs) = ParseCallArgs();
        return new CallExpr(pos, fn, args, kwargs);
    }

    private (List<Expr>, List<(string, Expr)>) ParseCallArgs()
    {
        Expect(TokenKind.Operator, "(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        bool requireComma = false;
        while (!IsOp(")"))
        {
            if (requireComma)
            {
                Expect(TokenKind.Operator, ",");
                if (IsOp(")"))
                {
                    break;
                }
            }
            if (IsOp("*") || IsOp("**"))
            {
                throw Unsupported("*args/**kwargs in a call", Current.Offset);
            }
            if (Current.Kind == TokenKind.Name && Look.Kind == TokenKind.Operator && Look.Value == "=")
            {
                string key = Next().Value;
                _i++;
                kwargs.Add((key, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0)
                {
                    throw Fail("positional argument follows keyword argument");
                }
                args.Add(ParseExpression());
            }
            requireComma = true;
        }
        Expect(TokenKind.Operator, ")");
        return (args, kwargs);
    }

    private Expr ParseFilter(Expr node)
    {
        while (SkipOp("|"))
        {
            var name = Expect(TokenKind.Name);
            if (IsOp("."))
            {
                throw Unsupported("dotted filter name", name.Offset);
            }
            if (!JinjaBuiltins.HasFilter(name.Value))
            {
                throw Unsupported($"filter '{name.Value}'", name.Offset);
            }
            var (args, kwargs) = IsOp("(") ? ParseCallArgs() : ([], []);
            node = new FilterExpr(name.Offset, node, name.Value, args, kwargs);
        }
        return node;
    }

    private Expr ParseTest(Expr node)
    {
        int pos = Next().Offset;
        bool negated = SkipName("not");
        var name = Expect(TokenKind.Name);
        if (IsOp("."))
        {
            throw Unsupported("dotted test name", name.Offset);
        }
        if (!JinjaBuiltins.HasTest(name.Value))
        {
            throw Unsupported($"test '{name.Value}'", name.Offset);
        }
        var args = new List<Expr>();
        if (IsOp("("))
        {
            var (a, kw) = ParseCallArgs();
            if (kw.Count > 0)
            {
                throw Unsupported("keyword arguments to a test", name.Offset);
            }
            args = a;
        }
        else if ((Current.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float || IsOp("[") || IsOp("{"))
                 && !IsName("else") && !IsName("or") && !IsName("and"))
        {
            if (IsName("is"))
            {
                throw Fail("you cannot chain multiple tests with is");
            }
            args.Add(ParsePostfix(ParsePrimary()));
        }
        return new TestExpr(pos, node, name.Value, args, negated);
    }
}

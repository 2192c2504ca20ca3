namespace Fiddler.Kernels.Text.ChatTemplates;

// Statements: the block tags ({% if %}, {% for %}, {% set %}, {% macro %}, ...) and their assignment targets.
internal sealed partial class JinjaParser
{
    private static readonly HashSet<string> UnsupportedTags =
        ["block", "extends", "include", "import", "from", "call", "filter", "with", "autoescape", "do", "trans", "print"];

    /// <summary>Parses nodes until a block tag named in <paramref name="endTags"/>; leaves the stream after that name.</summary>
    private List<Node> Subparse(HashSet<string> endTags, out string endTag)
    {
        EnsureStack();
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
}

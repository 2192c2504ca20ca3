namespace Fiddler.Kernels.Text.ChatTemplates;

// Primaries and postfix: literals, names, list/dict displays, attribute and item access, slices and calls.
internal sealed partial class JinjaParser
{
    private static readonly HashSet<string> UnsupportedGlobals = ["cycler", "joiner", "lipsum"];

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
        if (fn is AttrExpr { Name: var method } attr && JinjaMethods.IsUnimplementedEverywhere(method))
            throw Unsupported($"method {JinjaMethods.OwnerOf(method)}.{method}()", attr.Pos);
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
}

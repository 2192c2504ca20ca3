namespace Fiddler.Kernels.Text.ChatTemplates;

// Expressions: tuples, then one method per precedence level, loosest first (jinja2/parser.py parse_* order).
internal sealed partial class JinjaParser
{
    private static readonly HashSet<string> CompareOps = ["==", "!=", "<", "<=", ">", ">="];

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
        EnsureStack();
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
        EnsureStack();
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
}

namespace Fiddler.Kernels.Text.ChatTemplates;

// Filters (x | f(...)) and tests (x is [not] t ...): names are checked against JinjaBuiltins at parse time.
internal sealed partial class JinjaParser
{
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

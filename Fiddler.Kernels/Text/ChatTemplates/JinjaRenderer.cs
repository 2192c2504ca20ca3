using System.Text;

namespace Fiddler.Kernels.Text.ChatTemplates;

/// <summary>
/// Walks the template tree. Scoping follows jinja2: each for-loop iteration and each macro call gets a fresh
/// child scope (so a plain <c>set</c> inside a loop never leaks out — the reason templates use namespace()),
/// while if-blocks share their enclosing scope.
/// </summary>
internal sealed class JinjaRenderer
{
    private enum Flow { Normal, Break, Continue }

    private sealed class Scope(Scope? parent)
    {
        private readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);

        public bool TryGet(string name, out object? value)
        {
            for (var s = this; s is not null; s = s.Parent)
            {
                if (s._vars.TryGetValue(name, out value))
                {
                    return true;
                }
            }
            value = null;
            return false;
        }

        public Scope? Parent { get; } = parent;

        public void Set(string name, object? value) => _vars[name] = value;
    }

    private readonly string _src;

    private JinjaRenderer(string source) => _src = source;

    public static string Render(IReadOnlyList<Node> body, string source, IReadOnlyDictionary<string, object?> variables)
    {
        var root = new Scope(null);
        foreach (var (k, v) in variables)
        {
            root.Set(k, v);
        }
        var output = new StringBuilder();
        new JinjaRenderer(source).Exec(body, root, output);
        return output.ToString();
    }

    private NotSupportedException Unsupported(string what, int pos) => JinjaSyntax.Unsupported(_src, pos, what);

    private Flow Exec(IReadOnlyList<Node> nodes, Scope scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            var flow = ExecOne(node, scope, output);
            if (flow != Flow.Normal)
            {
                return flow;
            }
        }
        return Flow.Normal;
    }

    /// <summary>A template that recurses without end (a macro calling itself on ever longer input) must fail the
    /// request, not overflow the thread's stack, which would end the process.</summary>
    private static void EnsureStack()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw new JinjaRenderException("the chat template recursed too deeply (a macro calling itself?)");
    }

    private Flow ExecOne(Node node, Scope scope, StringBuilder output)
    {
        EnsureStack();
        switch (node)
        {
            case TextNode t:
                output.Append(t.Text);
                return Flow.Normal;
            case OutputNode o:
                output.Append(JinjaValue.Str(Eval(o.Value, scope)));
                return Flow.Normal;
            case IfNode n:
                foreach (var (test, body) in n.Branches)
                {
                    if (JinjaValue.Truthy(Eval(test, scope)))
                    {
                        return Exec(body, scope, output);
                    }
                }
                return Exec(n.Else, scope, output);
            case ForNode f:
                return ExecFor(f, scope, output);
            case SetNode s:
                Assign(s.Target, Eval(s.Value, scope), scope);
                return Flow.Normal;
            case SetBlockNode sb:
                var captured = new StringBuilder();
                Exec(sb.Body, scope, captured);
                Assign(sb.Target, captured.ToString(), scope);
                return Flow.Normal;
            case MacroNode m:
                scope.Set(m.Name, MakeMacro(m, scope));
                return Flow.Normal;
            case LoopControlNode lc:
                return lc.IsBreak ? Flow.Break : Flow.Continue;
            default:
                throw Unsupported($"node {node.GetType().Name}", node.Pos);
        }
    }

    private Flow ExecFor(ForNode f, Scope scope, StringBuilder output)
    {
        var items = JinjaValue.Items(Eval(f.Iter, scope));
        if (f.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                var probe = new Scope(scope);
                Assign(f.Target, item, probe);
                if (JinjaValue.Truthy(Eval(f.Filter, probe)))
                {
                    kept.Add(item);
                }
            }
            items = kept;
        }
        if (items.Count == 0)
        {
            return Exec(f.Else, scope, output);
        }
        var loop = new LoopContext(items);
        for (int i = 0; i < items.Count; i++)
        {
            loop.Index0 = i;
            var inner = new Scope(scope);
            inner.Set("loop", loop);
            Assign(f.Target, items[i], inner);
            if (Exec(f.Body, inner, output) == Flow.Break)
            {
                break;
            }
        }
        return Flow.Normal;
    }

    private void Assign(Target target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameTarget n:
                scope.Set(n.Name, value);
                break;
            case AttrTarget a:
                if (!scope.TryGet(a.Name, out var ns) || ns is not JinjaNamespace nsObj)
                {
                    throw new JinjaRenderException("cannot assign attribute on non-namespace object");
                }
                nsObj.Attrs[a.Attr] = value;
                break;
            case TupleTarget t:
                var items = JinjaValue.Items(value);
                if (items.Count != t.Items.Count)
                {
                    throw new JinjaRenderException(items.Count > t.Items.Count
                        ? $"too many values to unpack (expected {t.Items.Count})"
                        : $"not enough values to unpack (expected {t.Items.Count}, got {items.Count})");
                }
                for (int i = 0; i < items.Count; i++)
                {
                    Assign(t.Items[i], items[i], scope);
                }
                break;
        }
    }

    /// <summary>Macro calls nested deeper than this fail the render (jinja2 stops at Python's recursion limit, a few
    /// hundred macro levels): each level may hold a copy of its input, so depth must stay bounded before the stack is.</summary>
    internal const int MaxMacroDepth = 500;

    private int _macroDepth;

    private JinjaCallable MakeMacro(MacroNode m, Scope definedIn) => new(m.Name, (args, kwargs) =>
    {
        if (_macroDepth >= MaxMacroDepth)
            throw new JinjaRenderException($"the chat template recursed too deeply (macro '{m.Name}' nested more than {MaxMacroDepth} calls)");
        _macroDepth++;
        try { return CallMacro(m, definedIn, args, kwargs); }
        finally { _macroDepth--; }
    });

    private string CallMacro(MacroNode m, Scope definedIn, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs)
    {
        if (args.Count > m.Params.Count)
        {
            throw new JinjaRenderException($"macro '{m.Name}' takes not more than {m.Params.Count} argument(s)");
        }
        var scope = new Scope(definedIn);
        for (int i = 0; i < m.Params.Count; i++)
        {
            object? value = i < args.Count ? args[i]
                : m.Defaults[i] is { } d ? Eval(d, scope)
                : JinjaUndefined.ForName(m.Params[i]);
            scope.Set(m.Params[i], value);
        }
        foreach (var (name, value) in kwargs)
        {
            if (!m.Params.Contains(name))
            {
                throw new JinjaRenderException($"macro '{m.Name}' takes no keyword argument '{name}'");
            }
            scope.Set(name, value);
        }
        var output = new StringBuilder();
        Exec(m.Body, scope, output);
        return output.ToString();
    }

    // ---- expressions ----

    private object? Eval(Expr expr, Scope scope)
    {
        EnsureStack();
        switch (expr)
        {
            case ConstExpr c:
                return c.Value;
            case NameExpr n:
                if (scope.TryGet(n.Name, out var v))
                {
                    return v;
                }
                return JinjaBuiltins.Global(n.Name) ?? JinjaUndefined.ForName(n.Name);
            case ListExpr l:
                var items = l.Items.Select(e => Eval(e, scope)).ToList();
                return l.IsTuple ? items.ToArray() : items;
            case DictExpr d:
                var dict = new JinjaDict();
                foreach (var (k, val) in d.Items)
                {
                    dict[Eval(k, scope) ?? throw new JinjaRenderException("None as a dict key is not supported")] = Eval(val, scope);
                }
                return dict;
            case AttrExpr a:
                return JinjaBuiltins.GetAttr(Eval(a.Obj, scope), a.Name, _src, a.Pos);
            case ItemExpr i:
                return JinjaBuiltins.GetItem(Eval(i.Obj, scope), Eval(i.Key, scope), _src, i.Pos);
            case SliceExpr s:
                return JinjaBuiltins.Slice(Eval(s.Obj, scope), EvalOpt(s.Start, scope), EvalOpt(s.Stop, scope), EvalOpt(s.Step, scope));
            case CallExpr call:
                return Call(call, scope);
            case FilterExpr f:
                return JinjaFilters.Filter(f.Name, Eval(f.Value, scope),
                    f.Args.Select(e => Eval(e, scope)).ToList(), f.Kwargs.Select(kw => (kw.Name, Eval(kw.Value, scope))).ToList(), _src, f.Pos);
            case TestExpr t:
                bool result = JinjaBuiltins.Test(t.Name, Eval(t.Value, scope), t.Args.Select(e => Eval(e, scope)).ToList());
                return result != t.Negated;
            case UnaryExpr u:
                return Unary(u.Op, Eval(u.Operand, scope));
            case BinaryExpr { Op: "and" } b:
                var left = Eval(b.Left, scope);
                return JinjaValue.Truthy(left) ? Eval(b.Right, scope) : left;
            case BinaryExpr { Op: "or" } b:
                var first = Eval(b.Left, scope);
                return JinjaValue.Truthy(first) ? first : Eval(b.Right, scope);
            case BinaryExpr b:
                return JinjaOperators.Binary(b.Op, Eval(b.Left, scope), Eval(b.Right, scope));
            case CompareExpr c:
                var current = Eval(c.First, scope);
                foreach (var (op, operand) in c.Rest)
                {
                    var next = Eval(operand, scope);
                    if (!JinjaOperators.Compare(op, current, next))
                    {
                        return false;
                    }
                    current = next;
                }
                return true;
            case CondExpr ce:
                return JinjaValue.Truthy(Eval(ce.Test, scope))
                    ? Eval(ce.Then, scope)
                    : ce.Else is null ? new JinjaUndefined("the inline if-expression evaluated to false and no else section was defined.") : Eval(ce.Else, scope);
            default:
                throw Unsupported($"expression {expr.GetType().Name}", expr.Pos);
        }
    }

    private object? EvalOpt(Expr? e, Scope scope) => e is null ? null : Eval(e, scope);

    private object? Call(CallExpr call, Scope scope)
    {
        var fn = Eval(call.Fn, scope);
        var args = call.Args.Select(e => Eval(e, scope)).ToList();
        var kwargs = call.Kwargs.Select(kw => (kw.Name, Eval(kw.Value, scope))).ToList();
        return fn switch
        {
            JinjaCallable c => c.Invoke(args, kwargs),
            JinjaUndefined u => throw new JinjaRenderException(u.Hint),
            _ => throw new JinjaRenderException($"'{JinjaValue.TypeName(fn)}' object is not callable"),
        };
    }

    private static object? Unary(string op, object? v) => op switch
    {
        "not" => !JinjaValue.Truthy(v),
        "-" => v switch
        {
            double d => (object)(-d),
            bool or long => checked(-JinjaValue.ToLong(v)),
            JinjaUndefined u => throw new JinjaRenderException(u.Hint),
            _ => throw new JinjaRenderException($"bad operand type for unary -: '{JinjaValue.TypeName(v)}'"),
        },
        _ => v switch
        {
            double or long => v,
            bool => JinjaValue.ToLong(v),
            JinjaUndefined u => throw new JinjaRenderException(u.Hint),
            _ => throw new JinjaRenderException($"bad operand type for unary +: '{JinjaValue.TypeName(v)}'"),
        },
    };
}

/// <summary>The loop variable: index, index0, revindex, revindex0, first, last, length, previtem, nextitem, cycle.</summary>
internal sealed class LoopContext(IReadOnlyList<object?> items)
{
    public int Index0 { get; set; }

    public object? Attr(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new JinjaUndefined("there is no previous item"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : new JinjaUndefined("there is no next item"),
        "cycle" => new JinjaCallable("cycle", (args, _) =>
            args.Count == 0 ? throw new JinjaRenderException("no items for cycling given") : args[Index0 % args.Count]),
        _ => JinjaUndefined.ForAttr(this, name),
    };
}

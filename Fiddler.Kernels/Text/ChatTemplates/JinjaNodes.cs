namespace Fiddler.Kernels.Text.ChatTemplates;

// The template tree. Every node keeps the source offset it came from, for error messages.

internal abstract record Node(int Pos);

internal sealed record TextNode(int Pos, string Text) : Node(Pos);

internal sealed record OutputNode(int Pos, Expr Value) : Node(Pos);

internal sealed record IfNode(int Pos, IReadOnlyList<(Expr Test, IReadOnlyList<Node> Body)> Branches, IReadOnlyList<Node> Else) : Node(Pos);

internal sealed record ForNode(int Pos, Target Target, Expr Iter, Expr? Filter, IReadOnlyList<Node> Body, IReadOnlyList<Node> Else) : Node(Pos);

internal sealed record SetNode(int Pos, Target Target, Expr Value) : Node(Pos);

internal sealed record SetBlockNode(int Pos, Target Target, IReadOnlyList<Node> Body) : Node(Pos);

internal sealed record MacroNode(int Pos, string Name, IReadOnlyList<string> Params, IReadOnlyList<Expr?> Defaults, IReadOnlyList<Node> Body) : Node(Pos);

internal sealed record LoopControlNode(int Pos, bool IsBreak) : Node(Pos);

/// <summary>An assignment target: a name, <c>ns.attr</c>, or a tuple of names (for unpacking).</summary>
internal abstract record Target(int Pos);

internal sealed record NameTarget(int Pos, string Name) : Target(Pos);

internal sealed record AttrTarget(int Pos, string Name, string Attr) : Target(Pos);

internal sealed record TupleTarget(int Pos, IReadOnlyList<Target> Items) : Target(Pos);

internal abstract record Expr(int Pos);

internal sealed record ConstExpr(int Pos, object? Value) : Expr(Pos);

internal sealed record NameExpr(int Pos, string Name) : Expr(Pos);

internal sealed record ListExpr(int Pos, IReadOnlyList<Expr> Items, bool IsTuple) : Expr(Pos);

internal sealed record DictExpr(int Pos, IReadOnlyList<(Expr Key, Expr Value)> Items) : Expr(Pos);

internal sealed record AttrExpr(int Pos, Expr Obj, string Name) : Expr(Pos);

internal sealed record ItemExpr(int Pos, Expr Obj, Expr Key) : Expr(Pos);

internal sealed record SliceExpr(int Pos, Expr Obj, Expr? Start, Expr? Stop, Expr? Step) : Expr(Pos);

internal sealed record CallExpr(int Pos, Expr Fn, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs) : Expr(Pos);

internal sealed record FilterExpr(int Pos, Expr Value, string Name, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs) : Expr(Pos);

internal sealed record TestExpr(int Pos, Expr Value, string Name, IReadOnlyList<Expr> Args, bool Negated) : Expr(Pos);

internal sealed record UnaryExpr(int Pos, string Op, Expr Operand) : Expr(Pos);

/// <summary>Arithmetic (+ - * / // % **), "~", "and", "or".</summary>
internal sealed record BinaryExpr(int Pos, string Op, Expr Left, Expr Right) : Expr(Pos);

/// <summary>A comparison chain: <c>a &lt; b &lt;= c</c>, with "in" and "notin" among the operators.</summary>
internal sealed record CompareExpr(int Pos, Expr First, IReadOnlyList<(string Op, Expr Operand)> Rest) : Expr(Pos);

internal sealed record CondExpr(int Pos, Expr Test, Expr Then, Expr? Else) : Expr(Pos);

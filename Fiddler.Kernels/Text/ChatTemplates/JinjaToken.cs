namespace Fiddler.Kernels.Text.ChatTemplates;

internal enum TokenKind { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

internal readonly record struct Token(TokenKind Kind, string Value, int Offset)
{
    public object? Number { get; init; }
    public override string ToString() => Kind is TokenKind.Eof ? "end of template" : $"'{Value}'";
}

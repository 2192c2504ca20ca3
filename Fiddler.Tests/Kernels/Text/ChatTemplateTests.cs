using System.Text.Json.Nodes;
using Fiddler.Host.Cli;
using Fiddler.Kernels.Text;
using Xunit;

namespace Fiddler.Tests.Kernels.Text;

public sealed class ChatTemplateTests : IDisposable
{
    private static readonly (string, string)[] OneUser = [("user", "Hi")];

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "fiddler-chat-" + Guid.NewGuid().ToString("N"));

    public ChatTemplateTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Render(string source, IReadOnlyList<(string, string)>? messages = null, bool prompt = true) =>
        ChatTemplate.Parse(source, "<s>", "</s>").Apply(messages ?? OneUser, prompt);

    private void WriteConfig(JsonObject config) => File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), config.ToJsonString());

    [Fact]
    public void FromTokenizerConfig_DefaultModel_RendersMixtralInstruct()
    {
        var chat = ChatTemplate.FromTokenizerConfig(DefaultModel.Directory);

        Assert.NotNull(chat);
        Assert.Equal("mistral-instruct", chat.Name);
        Assert.Equal("<s> [INST] Be brief.\n\nHi [/INST] Hello</s> [INST] Bye [/INST]",
            chat.Apply([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")]));
    }

    [Fact]
    public void FromTokenizerConfig_NoTemplate_ReturnsNull()
    {
        WriteConfig(new JsonObject { ["bos_token"] = "<s>" });
        Assert.Null(ChatTemplate.FromTokenizerConfig(_dir));
    }

    [Fact]
    public void FromTokenizerConfig_TokenObjectsAndNamedList_UsesContentAndDefault()
    {
        WriteConfig(new JsonObject
        {
            ["bos_token"] = new JsonObject { ["content"] = "<B>", ["lstrip"] = false },
            ["eos_token"] = "<E>",
            ["unk_token"] = new JsonObject { ["content"] = "<U>" },
            ["chat_template"] = new JsonArray(
                new JsonObject { ["name"] = "tool_use", ["template"] = "TOOLS" },
                new JsonObject { ["name"] = "default", ["template"] = "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ unk_token }}" }),
        });

        var chat = ChatTemplate.FromTokenizerConfig(_dir)!;

        Assert.Equal("<B>Hi<E><U>", chat.Apply(OneUser));
        Assert.Equal("custom", chat.Name);
    }

    [Fact]
    public void FromTokenizerConfig_UnsupportedTemplate_ThrowsNotSupported()
    {
        WriteConfig(new JsonObject { ["chat_template"] = "{% include 'x.jinja' %}" });
        var ex = Assert.Throws<NotSupportedException>(() => ChatTemplate.FromTokenizerConfig(_dir));
        Assert.Contains("tag 'include' at line 1 col 4", ex.Message);
    }

    [Theory]
    [InlineData("{{ x | frobnicate }}", "filter 'frobnicate' at line 1 col 8")]
    [InlineData("a\n{% if x is frob %}{% endif %}", "test 'frob' at line 2 col 12")]
    [InlineData("{% for m in messages recursive %}{% endfor %}", "recursive for loop")]
    [InlineData("{% filter upper %}x{% endfilter %}", "tag 'filter'")]
    [InlineData("{% extends 'base' %}", "tag 'extends'")]
    [InlineData("{{ cycler('a', 'b') }}", "global 'cycler'")]
    [InlineData("{{ f(*args) }}", "*args/**kwargs")]
    [InlineData("{{ messages[0]['content'].zfill(5) }}", "method str.zfill()")]
    [InlineData("{{ '%s' % 'x' }}", "printf-style")]
    public void Parse_UnsupportedConstruct_ThrowsNotSupportedWithPosition(string source, string expected)
    {
        var ex = Assert.Throws<NotSupportedException>(() => ChatTemplate.Parse(source, "<s>", "</s>"));
        Assert.StartsWith("chat template: unsupported", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Theory]
    [InlineData("{% if x %}", "unexpected end of template, expected 'elif' or 'else' or 'endif'")]
    [InlineData("{{ 'abc }}", "string literal is not closed")]
    [InlineData("{{ x ", "tag is not closed")]
    [InlineData("{% frob %}", "unknown tag 'frob'")]
    [InlineData("{{ (1 }}", "unexpected")]
    [InlineData("{# never closed", "comment is not closed")]
    public void Parse_InvalidJinja_ThrowsInvalidData(string source, string expected)
    {
        var ex = Assert.Throws<InvalidDataException>(() => ChatTemplate.Parse(source, "<s>", "</s>"));
        Assert.StartsWith("chat template: syntax error", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Theory]
    // trim_blocks: one newline after a block tag goes; lstrip_blocks: indentation before a block tag goes.
    [InlineData("{% if true %}\nA\n{% endif %}\nB", "A\nB")]
    [InlineData("  {% if true %}\n  A\n  {% endif %}\n", "  A\n")]
    [InlineData("x  {% if true %}y{% endif %}", "x  y")]
    [InlineData("  {%+ if true %}y{% endif +%}\nz\n", "  y\nz")]
    [InlineData("a   {{- 'b' -}}   \n  c", "abc")]
    [InlineData("a  {{ 'b' }}\n", "a  b")]
    [InlineData("a\n  {# comment #}\nb", "a\nb")]
    [InlineData("a\r\nb\r\n\n", "a\nb\n")]
    [InlineData("{% raw %}{{ x }}{% endraw %}", "{{ x }}")]
    public void Apply_WhitespaceControl_MatchesJinja2(string source, string expected) =>
        Assert.Equal(expected, Render(source));

    [Theory]
    [InlineData("{{ 'a\\tb\\n\\'q\\' \\u00e9 \\x41 \\\\' }}", "a\tb\n'q' é A \\")]
    [InlineData("{{ (1 + 2) * 3 ~ 'x' }}", "9x")]
    [InlineData("{{ 'a' ~ (1 + 2) }}", "a3")]
    [InlineData("{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 3 }} {{ 1e3 }}", "-4 2 3.5 8 1000.0")]
    [InlineData("{{ 'x' if false }}|{{ 'x' if false else 'y' }}", "|y")]
    [InlineData("{{ undefined_name }}|{{ undefined_name is defined }}|{{ none is none }}", "|False|True")]
    [InlineData("{{ not 1 in [1, 2] }} {{ 3 not in [1, 2] }} {{ 1 < 2 < 3 }}", "False True True")]
    [InlineData("{{ [1, 2, 3][::-1] }} {{ 'héllo👋'[1:] }} {{ 'héllo👋'|length }}", "[3, 2, 1] éllo👋 6")]
    [InlineData("{{ {'a': 1}.items() | list }} {{ {'a': [1.0, none]} | tojson }}", "[('a', 1)] {\"a\": [1.0, null]}")]
    [InlineData("{% set a, b = [1, 2] %}{{ b }}{{ a }}", "21")]
    [InlineData("{% macro m(x, y='d') %}[{{ x }}{{ y }}]{% endmacro %}{{ m(1) }}{{ m(2, y='e') }}", "[1d][2e]")]
    [InlineData("{% set ns = namespace(n=0) %}{% for i in range(4) if i is odd %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", "4")]
    [InlineData("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", "1")]
    [InlineData("{% for i in [] %}x{% else %}empty{% endfor %}", "empty")]
    [InlineData("{{ '  a b  '.strip().split(' ') }} {{ 'A-b c'.title() }} {{ 'abc'.startswith(('x', 'a')) }}", "['a', 'b'] A-B C True")]
    [InlineData("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 123456789.0 }}", "0.30000000000000004 1e+20 1.5e-07 123456789.0")]
    public void Apply_Expressions_MatchPythonSemantics(string source, string expected) =>
        Assert.Equal(expected, Render(source));

    [Fact]
    public void Apply_RaiseException_ThrowsArgumentExceptionWithTemplateMessage()
    {
        var chat = ChatTemplate.Parse("{% if messages|length > 1 %}{{ raise_exception('too many: ' ~ messages|length) }}{% endif %}ok", null, null);

        Assert.Equal("ok", chat.Apply(OneUser));
        var ex = Assert.Throws<ArgumentException>(() => chat.Apply([("user", "a"), ("user", "b")]));
        Assert.StartsWith("too many: 2", ex.Message);
    }

    [Fact]
    public void Apply_ConcatBindsTighterThanPlus_IsATypeErrorAsInJinja2()
    {
        // "~" sits between "+" and "*": 1 + ((2 * 3) ~ 'x') = 1 + '6x'.
        var ex = Assert.Throws<ArgumentException>(() => Render("{{ 1 + 2 * 3 ~ 'x' }}"));
        Assert.StartsWith("unsupported operand type(s) for +: 'int' and 'str'", ex.Message);
    }

    [Fact]
    public void Apply_UndefinedUsedInArithmetic_ThrowsArgumentException()
    {
        var chat = ChatTemplate.Parse("{{ 'x' + system_message }}", null, null);
        var ex = Assert.Throws<ArgumentException>(() => chat.Apply(OneUser));
        Assert.StartsWith("'system_message' is undefined", ex.Message);
    }

    [Fact]
    public void Apply_ContentWithTemplateSyntax_IsNotInterpreted() =>
        Assert.Equal("{{ bos_token }}{% if %}", Render("{{ messages[0].content }}", [("user", "{{ bos_token }}{% if %}")]));

    [Fact]
    public void Apply_StrftimeNow_FormatsTheCurrentDate() =>
        Assert.Equal(DateTime.Now.Year.ToString(System.Globalization.CultureInfo.InvariantCulture), Render("{{ strftime_now('%Y') }}"));

    [Fact]
    public void Apply_NullBosToken_IsUndefinedAndRendersEmpty() =>
        Assert.Equal("[]", ChatTemplate.Parse("[{{ bos_token }}]", null, null).Apply(OneUser));

    [Fact]
    public void Parse_MacroThatCallsItselfForever_IsAnErrorNotAStackOverflow()
    {
        // A stack overflow ends the process; the template must fail instead, at load or when applied.
        var template = ChatTemplate.Parse("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "<s>", "</s>");
        var e = Assert.Throws<ArgumentException>(() => template.Apply(OneUser));
        Assert.Contains("recursed too deeply", e.Message);
    }

    [Fact]
    public void Apply_RecursionThatGrowsWithTheMessage_IsARequestErrorNotAStackOverflow()
    {
        // Loads and renders short messages; a long one must be refused, not crash the server.
        const string source = "{% macro r(s) %}{% if s %}{{ s[0] }}{{ r(s[1:]) }}{% endif %}{% endmacro %}" +
                              "{% for m in messages %}{{ r(m['content']) }}{% endfor %}";
        var template = ChatTemplate.Parse(source, "<s>", "</s>");
        Assert.Equal("hello", template.Apply([("user", "hello")]));
        var e = Assert.Throws<ArgumentException>(() => template.Apply([("user", new string('x', 5_000))]));
        Assert.Contains("recursed too deeply", e.Message);
    }

    [Fact]
    public void Parse_ExpressionNestedThousandsDeep_IsATemplateErrorNotAStackOverflow()
    {
        string source = "{{ " + new string('(', 50_000) + "1" + new string(')', 50_000) + " }}";
        var e = Assert.Throws<InvalidDataException>(() => ChatTemplate.Parse(source, "<s>", "</s>"));
        Assert.Contains("nests too deeply", e.Message);
        // A long chain of "not": refused at load or when applied, or rendered; never a crash.
        string nots = "{{ " + string.Concat(Enumerable.Repeat("not ", 200_000)) + "1 }}";
        try { Assert.Contains(ChatTemplate.Parse(nots, "<s>", "</s>").Apply(OneUser), new[] { "True", "False" }); }
        catch (Exception x) when (x is InvalidDataException or ArgumentException) { }
    }

    [Theory]
    [InlineData("{% for m in messages %}{% if m['role'] == 'tool' %}{{ m['content'].zfill(3) }}{% endif %}{% endfor %}", "str.zfill()")]
    [InlineData("{{ '{}'.format(1) }}", "str.format()")]
    public void Parse_PythonMethodNoTypeImplements_IsRefusedAtLoad(string source, string method)
    {
        // Found at load, not as a 400 for the first conversation that reaches it.
        var e = Assert.Throws<NotSupportedException>(() => ChatTemplate.Parse(source, "<s>", "</s>"));
        Assert.Contains(method, e.Message);
        // Methods some type implements still load (and run where the value has them).
        Assert.Equal("hi", ChatTemplate.Parse("{% for m in messages %}{{ m['content'].strip() }}{% endfor %}", "<s>", "</s>").Apply([("user", " hi ")]));
    }
}

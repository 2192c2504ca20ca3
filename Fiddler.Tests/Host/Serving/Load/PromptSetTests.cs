using Fiddler.Host.Serving.Load;
using Fiddler.Tests.Support;
using Xunit;

namespace Fiddler.Tests.Host.Serving.Load;

public sealed class PromptSetTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string text)
    {
        string path = Path.Combine(_dir, "prompts.txt");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Load_JsonlAndPlainLines_TextOfEachSkippingBlanks()
        => Assert.Equal(["first \"quoted\"", "plain line", "héllo 🙂"],
            PromptSet.Load(Write("{\"text\": \"first \\\"quoted\\\"\", \"id\": 1}\n\n  \nplain line\n{\"text\":\"héllo 🙂\"}\n")));

    [Fact]
    public void Load_JsonLineWithoutText_ThrowsWithLineNumber()
    {
        var e = Assert.Throws<InvalidDataException>(() => PromptSet.Load(Write("ok\n{\"prompt\": \"x\"}\n")));
        Assert.Contains(":2:", e.Message);
    }

    [Fact]
    public void Load_BrokenJsonLine_Throws()
        => Assert.Throws<InvalidDataException>(() => PromptSet.Load(Write("{\"text\": \"x\"\n")));

    [Fact]
    public void Load_EmptyFile_Throws()
        => Assert.Throws<InvalidDataException>(() => PromptSet.Load(Write("\n\n")));

    [Theory]
    [InlineData("30s", 30_000)]
    [InlineData("500ms", 500)]
    [InlineData("2m", 120_000)]
    [InlineData("1h", 3_600_000)]
    [InlineData("1.5", 1_500)]
    public void ParseDuration_Units_Milliseconds(string text, double ms)
        => Assert.Equal(ms, LoadOptions.ParseDuration(text, "--duration").TotalMilliseconds);

    [Theory]
    [InlineData("")]
    [InlineData("0s")]
    [InlineData("-3s")]
    [InlineData("abc")]
    [InlineData("5 parsecs")]
    [InlineData("1e400")]
    public void ParseDuration_Bad_ThrowsNamingTheFlag(string text)
        => Assert.Contains("--duration", Assert.Throws<ArgumentException>(() => LoadOptions.ParseDuration(text, "--duration")).Message);
}

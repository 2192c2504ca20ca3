using System.Text.Json;
using Fiddler.Tests.Support;
using Xunit;

namespace Fiddler.Tests.Host;

/// <summary><c>fiddler profile</c> on the embedded default model: the popularity file it writes, and its user errors.</summary>
[Collection(ConsoleCollection.Name)]
public sealed class ProfileCommandTests : IDisposable
{
    private readonly Fiddler.Tests.Kernels.IO.TempDir _temp = new();
    private string Dir => _temp.Path;

    public void Dispose() => _temp.Dispose();

    private string Prompts(string content)
    {
        File.WriteAllText(_temp.File("prompts.jsonl"), content);
        return _temp.File("prompts.jsonl");
    }

    [Fact]
    public void Profile_Jsonl_WritesCountsForEveryLayer()
    {
        string output = Path.Combine(Dir, "popularity.json");
        var r = CliHarness.Run("profile", "--prompts", Prompts("{\"text\": \"Once upon a time\"}\n\n{\"text\": \"The meaning of life is\"}\n"),
            "--out", output, "--max-tokens", "4");
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Contains("2 prompts", r.Out);
        using var json = JsonDocument.Parse(File.ReadAllText(output));
        Assert.Equal(JsonValueKind.Object, json.RootElement.ValueKind);
    }

    [Theory]
    [InlineData("{\"text\": \"a\"}\n{\"prompt\": \"b\"}\n", ":2: not an object with a \"text\" field")]
    [InlineData("{\"text\": \"a\"}\n[1, 2]\n", ":2: not an object with a \"text\" field")]
    [InlineData("{\"text\": 5}\n", ":1: \"text\" is not a string")]
    public void Profile_JsonlLineWithoutText_NamesTheLine(string content, string expected)
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts(content), "--out", Path.Combine(Dir, "p.json")),
            StringComparison.Ordinal, expected);

    [Fact]
    public void Profile_OutIntoAMissingFolder_RefusedBeforeAnyPrompt()
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts("{\"text\": \"a\"}\n"), "--out", "/nonexistent/dir/p.json"),
            StringComparison.Ordinal, "--out", "/nonexistent/dir");
}

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
        // "tokens" counts what the model ran, each token making top-k choices per layer: every layer's counts sum to
        // tokens × k (the last generated token of each prompt is sampled but never run).
        long tokens = json.RootElement.GetProperty("tokens").GetInt64();
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(Fiddler.Host.Cli.DefaultModel.Resolve(null), "config.json"));
        Assert.All(json.RootElement.GetProperty("counts").EnumerateArray(),
            layer => Assert.Equal(tokens * config.NumExpertsPerTok, layer.EnumerateArray().Sum(c => c.GetInt64())));
        Assert.Contains($"{tokens} tokens", r.Out);
    }

    [Fact]
    public void Profile_NoPromptFitsTheContext_FailsAndWritesNothing()
    {
        string output = Path.Combine(Dir, "none.json");
        int context = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(Fiddler.Host.Cli.DefaultModel.Resolve(null), "config.json")).MaxPositionEmbeddings;
        string longText = string.Join(" ", Enumerable.Repeat("word", context * 2));
        var r = CliHarness.Run("profile", "--prompts", Prompts($"{{\"text\": \"{longText}\"}}\n"), "--out", output, "--max-tokens", "2");
        Assert.Equal(2, r.ExitCode);
        var lines = r.Err.TrimEnd().Split('\n');
        Assert.Equal(2, lines.Length); // the skipped prompt, then the error
        Assert.StartsWith("skipped a prompt of", lines[0]);
        Assert.StartsWith("fiddler: error: no prompt of 1 fits the model's context", lines[1]);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void Profile_NotUtf8_Refused()
    {
        string path = _temp.File("latin1.jsonl");
        File.WriteAllBytes(path, [.. "{\"text\": \"caf"u8, 0xE9, .. "\"}\n"u8]);
        CliAssert.UserError(CliHarness.Run("profile", "--prompts", path, "--out", Path.Combine(Dir, "p.json")), StringComparison.Ordinal, "not UTF-8 text");
    }

    [Fact]
    public void Profile_JsonSyntaxError_NamesTheLine()
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts("{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \n"), "--out", Path.Combine(Dir, "p.json")),
            StringComparison.Ordinal, "prompts.jsonl:3: not JSON");

    [Fact]
    public void Profile_ShareGptTurnWithoutFrom_NamesTheConversation()
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts("[{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}]}, {\"conversations\": [{\"value\": \"b\"}]}]"),
            "--out", Path.Combine(Dir, "p.json")), StringComparison.Ordinal, "conversation 1: a turn without \"from\" and \"value\"");

    [Fact]
    public void Profile_OutIsAFolder_RefusedBeforeAnyPrompt()
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts("{\"text\": \"a\"}\n"), "--out", Dir),
            StringComparison.Ordinal, "--out", "is a folder");

    [Fact]
    public void Profile_ZeroMaxTokens_RefusedBeforeLoading()
        => CliAssert.UserError(CliHarness.Run("profile", "--prompts", Prompts("{\"text\": \"a\"}\n"), "--out", Path.Combine(Dir, "p.json"), "--max-tokens", "0"),
            StringComparison.Ordinal, "max");

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

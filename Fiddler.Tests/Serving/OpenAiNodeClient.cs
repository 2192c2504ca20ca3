using System.Diagnostics;
using System.Text.Json.Nodes;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>What one <c>node check.mjs URL</c> run printed: its JSON (null when stdout was not one JSON object) and exit code.</summary>
public sealed record NodeCheckResult(int ExitCode, JsonObject? Json, string Stdout, string Stderr)
{
    public bool Ok => ExitCode == 0 && Json?["ok"]?.GetValue<bool>() == true;

    public override string ToString() => $"exit code {ExitCode}\nstdout: {Stdout}\nstderr: {Stderr}";
}

/// <summary>
/// Runs tests/openai-client/check.mjs, the official <c>openai</c> npm client driving a server through models, chat,
/// streamed chat, legacy completions and error answers. Installs the pinned client with <c>npm ci</c> the first time
/// (node_modules is not committed). Point it at any server: <c>await OpenAiNodeClient.RunAsync(new Uri("http://127.0.0.1:8080"))</c>.
/// </summary>
public static class OpenAiNodeClient
{
    private static readonly SemaphoreSlim InstallLock = new(1, 1);

    /// <summary>tests/openai-client in this checkout (found by walking up from the test binaries to Fiddler.sln).</summary>
    public static string ScriptDirectory { get; } = Path.Combine(RepositoryRoot(), "tests", "openai-client");

    /// <summary>The node executable on PATH, or null where node is not installed.</summary>
    public static string? Node { get; } = FindOnPath("node");

    public static async Task<NodeCheckResult> RunAsync(Uri baseUrl, string? apiKey = null, TimeSpan? timeout = null)
    {
        if (Node is null) throw new InvalidOperationException("node is not installed (not on PATH)");
        await EnsureInstalledAsync();
        var args = new List<string> { "check.mjs", baseUrl.AbsoluteUri };
        if (apiKey is not null) args.Add(apiKey);
        var (code, stdout, stderr) = await RunProcessAsync(Node, args, timeout ?? TimeSpan.FromMinutes(2));
        JsonObject? json = null;
        try { json = JsonNode.Parse(stdout) as JsonObject; }
        catch (System.Text.Json.JsonException) { }
        return new NodeCheckResult(code, json, stdout, stderr);
    }

    /// <summary><c>npm ci</c> once per test run when the pinned client is not installed yet.</summary>
    private static async Task EnsureInstalledAsync()
    {
        await InstallLock.WaitAsync();
        try
        {
            if (File.Exists(Path.Combine(ScriptDirectory, "node_modules", "openai", "package.json"))) return;
            string npm = FindOnPath("npm") ?? throw new InvalidOperationException("node is installed but npm is not (needed once for `npm ci` in tests/openai-client)");
            var (code, stdout, stderr) = await RunProcessAsync(npm, ["ci", "--no-audit", "--no-fund"], TimeSpan.FromMinutes(5));
            if (code != 0) throw new InvalidOperationException($"`npm ci` in {ScriptDirectory} failed with exit code {code}:\n{stdout}\n{stderr}");
        }
        finally { InstallLock.Release(); }
    }

    private static async Task<(int Code, string Stdout, string Stderr)> RunProcessAsync(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(file)
        {
            WorkingDirectory = ScriptDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(timeout);
        try { await process.WaitForExitAsync(deadline.Token); }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in {timeout}; stderr so far: {await stderr}");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    internal static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, name))
            .FirstOrDefault(File.Exists);

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Fiddler.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no Fiddler.sln above {AppContext.BaseDirectory}");
    }
}

/// <summary>A test that needs node: reported as skipped, saying so, where node is not on PATH; it runs (and may fail) everywhere else.</summary>
public sealed class NodeFactAttribute : FactAttribute
{
    public NodeFactAttribute()
    {
        if (OpenAiNodeClient.FindOnPath("node") is null)
            Skip = "node is not installed (not on PATH): the official openai npm client check (tests/openai-client) cannot run here; install Node.js to run it";
    }
}

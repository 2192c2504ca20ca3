using Xunit;
using Fiddler.Host.Cli;

namespace Fiddler.Tests.Host;

/// <summary>Tests that swap Console.Out/Console.Error run in this collection, alone (no other test runs meanwhile).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleCollection
{
    public const string Name = "Console (not parallel)";
}

/// <summary>What one in-process <c>fiddler</c> run printed and returned.</summary>
public sealed record CliResult(int ExitCode, string Out, string Err);

/// <summary>Runs <see cref="FiddlerCli.Run"/> in-process as Program.cs does, capturing stdout and stderr.</summary>
public static class CliHarness
{
    public static CliResult Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        Console.SetOut(stdout);
        Console.SetError(stderr);
        int code;
        try { code = FiddlerCli.Run(args); }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
        return new CliResult(code, stdout.ToString(), stderr.ToString());
    }
}

/// <summary>The CLI's user-error contract, shared by the command tests.</summary>
public static class CliAssert
{
    /// <summary>Exit code 2 and exactly one line on stderr, "fiddler: error: ..." containing each of <paramref name="expected"/>.</summary>
    public static void UserError(CliResult r, StringComparison comparison, params string[] expected)
    {
        Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}, stdout: {r.Out}, stderr: {r.Err}");
        string err = r.Err.TrimEnd('\r', '\n');
        Assert.DoesNotContain('\n', err);
        Assert.StartsWith("fiddler: error: ", err);
        foreach (string s in expected) Assert.Contains(s, err, comparison);
    }
}

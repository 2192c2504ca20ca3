using Xunit;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Host;

/// <summary><c>fiddler verify</c>, <c>fiddler bench</c> and <c>fiddler bench-decode</c>: user errors give exit code 2 and one line, before any heavy work.</summary>
[Collection(ConsoleCollection.Name)]
public sealed class OtherCommandErrorTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static void AssertUserError(CliResult r, string expected) => CliAssert.UserError(r, StringComparison.Ordinal, expected);

    [Fact]
    public void Verify_NoFixturesOption_ExitCode2()
        => AssertUserError(CliHarness.Run("verify"), "--fixtures");

    [Fact]
    public void Verify_FixturesDirectoryMissing_ExitCode2()
        => AssertUserError(CliHarness.Run("verify", "--fixtures", "/nonexistent/fixtures"), "/nonexistent/fixtures");

    [Fact]
    public void Verify_FixturesDirectoryWithoutModels_ExitCode2()
        => AssertUserError(CliHarness.Run("verify", "--fixtures", _dir), "no fixture models");

    [Fact]
    public void BenchDecode_UnknownConfigName_ExitCode2()
        => AssertUserError(CliHarness.Run("bench-decode", "--device", "cpu", "--config", "llama-7b"), "llama-7b");

    [Fact]
    public void BenchDecode_ZeroLayers_ExitCode2()
        => AssertUserError(CliHarness.Run("bench-decode", "--device", "cpu", "--layers", "0"), "num_hidden_layers");

    [Theory]
    [InlineData("--max-tokens", "99999999999", "option '--max-tokens' takes a whole number from -2147483648 to 2147483647, not '99999999999'")]
    [InlineData("--temperature", "warm", "option '--temperature' takes a number (e.g. 0.7), not 'warm'")]
    [InlineData("--seed", "-1", "option '--seed' takes a whole number from 0 to 18446744073709551615, not '-1'")] // an optional (Nullable) option
    public void Generate_OptionValueOfTheWrongKind_SaysWhatTheOptionTakes(string option, string value, string expected)
    {
        var r = CliHarness.Run("generate", "--prompt", "hi", option, value);
        AssertUserError(r, expected);
        Assert.DoesNotContain("System.", r.Err);
    }

    [Fact]
    public void Calibrate_Model_MeasuresInTheCheckpointsDtype()
    {
        // The fixture is float32: an engine loading it looks for a Float32 profile, so calibrate must write one (it wrote
        // bfloat16, which that engine then discarded and recalibrated over).
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string output = Path.Combine(_dir, "calib", "profile.json"); // a missing folder is made
        var r = CliHarness.Run("calibrate", "--model", model, "--device", "cpu", "--out", output, "--cpu-threads", "1");
        Assert.True(r.ExitCode == 0, r.Err);
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(output));
        Assert.Equal("Float32", json.RootElement.GetProperty("key").GetProperty("dtype").GetString());
        AssertUserError(CliHarness.Run("calibrate", "--model", model, "--device", "cpu", "--out", _dir), "is a folder");
    }

    [Fact]
    public void BenchCpuExpert_BadWarmSize_ExitCode2BeforeAnyWork()
        => AssertUserError(CliHarness.Run("bench-cpu-expert", "--warm-mb", "16,lots"), "--warm-mb: 'lots' is not a positive size in MB");

    [Theory]
    [InlineData("--prefetch-level", "l1,l9", "--prefetch-level: 'l9' is not one of l1, l2, l3, nta")]
    [InlineData("--next-rows", "0,2", "--next-rows: '2' is not 0 or 1")]
    [InlineData("--rows", "spread,zigzag", "--rows: 'zigzag' is not spread or adjacent")]
    public void BenchCpuExpert_BadTuningList_ExitCode2BeforeCuda(string option, string value, string message)
        => AssertUserError(CliHarness.Run("bench-cpu-expert", "--with-copies", option, value), message);

    [Theory]
    [InlineData("--next-rows", "7")]
    [InlineData("--rows", "adjacent")]
    [InlineData("--prefetch-bytes", "1024")]
    public void BenchCpuExpert_TuningListWithoutCopies_ExitCode2(string option, string value)
        => AssertUserError(CliHarness.Run("bench-cpu-expert", option, value), $"{option} only applies with --with-copies");

    [Fact]
    public void BenchCpuExpert_WarmMb_TimesTheKernelAfterEachReadAhead()
    {
        var r = CliHarness.Run("bench-cpu-expert", "--hidden", "256", "--intermediate", "4096", "--tokens", "1", "--iterations", "3",
            "--experts", "2", "--bandwidth-gb", "0.07", "--no-torch", "--warm-mb", "2,4");
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Err}");
        string[][] rows = r.Out.Split('\n').SkipWhile(l => !l.Contains("asked MB")).Skip(1).Where(l => l.Trim().Length > 0)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToArray();
        Assert.Equal(["0", "2", "4"], rows.Select(c => c[0]));
        // What was read: whole MiB of each of w1 and w3 (2 MB asked: 1 MiB each; 4 MB: still 1 MiB each, 2 MB being under 2 MiB).
        Assert.Equal(["0.0", "2.1", "2.1"], rows.Select(c => c[1]));
        Assert.All(rows.Skip(1), c => Assert.True(double.Parse(c[2], System.Globalization.CultureInfo.InvariantCulture) > 0));
    }

    [Fact]
    public void Bench_UnknownMerge_ExitCode2BeforeBuildingTheModel()
        => AssertUserError(CliHarness.Run("bench", "--config", "mixtral-8x7b", "--dummy-weights", "--device", "cpu", "--merge", "eventually"),
            "--merge: 'eventually'");

    [Fact]
    public void Bench_UnknownRouting_ExitCode2()
        => AssertUserError(CliHarness.Run("bench", "--config", "mixtral-8x7b", "--dummy-weights", "--device", "cpu", "--routing", "gpu-only"),
            "--routing: 'gpu-only'");

    [Fact]
    public void Bench_NegativeReadbackSpin_ExitCode2BeforeBuildingTheModel()
        => AssertUserError(CliHarness.Run("bench", "--config", "mixtral-8x7b", "--dummy-weights", "--device", "cpu", "--readback-spin-us", "-5"),
            "--readback-spin-us: -5");

    [Fact]
    public void Bench_ZeroDecodeRepeats_ExitCode2BeforeBuildingTheModel()
        => AssertUserError(CliHarness.Run("bench", "--config", "mixtral-8x7b", "--dummy-weights", "--device", "cpu", "--decode-repeats", "0"),
            "--decode-repeats: 0");

    [Fact]
    public void BenchDecode_TooFewNewTokens_ExitCode2()
        => AssertUserError(CliHarness.Run("bench-decode", "--device", "cpu", "--layers", "1", "--new-tokens", "1"), "--new-tokens");
}

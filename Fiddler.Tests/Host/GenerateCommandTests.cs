using Xunit;
using System.Text.Json;
using Fiddler.Host.Cli;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Host;

/// <summary>
/// <c>fiddler generate</c> in-process on the embedded default model (4096 tokens, context 512; loads in well under a
/// second): the JSON output, determinism, and every user error as exit code 2 with one "fiddler: error:" line.
/// </summary>
[Collection(ConsoleCollection.Name)]
public sealed class GenerateCommandTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static JsonElement Json(CliResult r)
    {
        Assert.True(r.ExitCode == 0, $"exit code {r.ExitCode}, stderr: {r.Err}");
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines); // one JSON object, nothing else on stdout
        using var doc = JsonDocument.Parse(lines[0]);
        return doc.RootElement.Clone();
    }

    private static int[] Tokens(JsonElement json) => json.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();

    /// <summary>Exit code 2, nothing on stdout, exactly one line on stderr: "fiddler: error: ..." containing each of <paramref name="expected"/>.</summary>
    private static void AssertUserError(CliResult r, params string[] expected)
    {
        CliAssert.UserError(r, StringComparison.OrdinalIgnoreCase, expected);
        Assert.Equal("", r.Out);
        Assert.DoesNotContain("Unhandled exception", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Fact]
    public void Generate_GreedyJson_PrintsOneObjectWithTokensAndTop5Steps()
    {
        var json = Json(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--temperature", "0", "--json"));
        int[] tokens = Tokens(json);
        Assert.InRange(tokens.Length, 1, 5);
        Assert.Equal([1, 2, 3], json.GetProperty("prompt_ids").EnumerateArray().Select(t => t.GetInt32()));
        Assert.Equal(DefaultModel.Directory, json.GetProperty("model").GetString());
        Assert.Contains(json.GetProperty("finish_reason").GetString(), new[] { "length", "eos" });
        if (tokens.Length < 5) Assert.Equal("eos", json.GetProperty("finish_reason").GetString());

        var steps = json.GetProperty("steps").EnumerateArray().ToList();
        Assert.Equal(tokens.Length, steps.Count);
        for (int i = 0; i < steps.Count; i++)
        {
            Assert.Equal(tokens[i], steps[i].GetProperty("id").GetInt32());
            var top = steps[i].GetProperty("top").EnumerateArray().ToList();
            Assert.Equal(5, top.Count);
            var logprobs = top.Select(t => t.GetProperty("logprob").GetSingle()).ToList();
            Assert.Equal(logprobs.OrderDescending(), logprobs);
            Assert.All(logprobs, lp => Assert.True(lp <= 0));
            Assert.Equal(5, top.Select(t => t.GetProperty("id").GetInt32()).Distinct().Count());
            // Greedy: the chosen token is the most likely one.
            Assert.Equal(tokens[i], top[0].GetProperty("id").GetInt32());
        }
    }

    [Fact]
    public void Generate_UnderABudget_ReservesThisRequestsKvCacheOncePerBeam()
    {
        // The embedded model fits a 64 MiB budget whole; the placement summary (stderr) names the KV cache it reserved:
        // the prompt's 3 + 5 new tokens, once per beam.
        string Kv(CliResult r)
        {
            Assert.True(r.ExitCode == 0, $"exit code {r.ExitCode}, stderr: {r.Err}");
            var m = System.Text.RegularExpressions.Regex.Match(r.Err, @"KV cache ([0-9.]+) MiB");
            Assert.True(m.Success, r.Err);
            return m.Groups[1].Value;
        }
        string one = Kv(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--temperature", "0", "--json",
            "--device", "cpu", "--gpu-budget", "64MiB"));
        string four = Kv(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--json", "--device", "cpu",
            "--gpu-budget", "64MiB", "--beam-width", "4"));
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(DefaultModel.Directory, "config.json"));
        var shape = Fiddler.Actors.Placement.ModelShape.From(config, 2);
        Assert.Equal((shape.KvCacheBytes(8) / 1048576.0).ToString("0.###", System.Globalization.CultureInfo.InvariantCulture), one);
        Assert.Equal((shape.KvCacheBytes(8, batch: 4) / 1048576.0).ToString("0.###", System.Globalization.CultureInfo.InvariantCulture), four);
    }

    [Fact]
    public void Generate_PopularityWithoutBudget_SaysItNeedsOne()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2", "--max-tokens", "2", "--popularity", "/nonexistent/popularity.json"),
            "--popularity", "--gpu-budget");

    [Fact]
    public void Generate_IgnoreEos_GivesExactlyMaxTokens()
    {
        var json = Json(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--temperature", "0",
            "--json", "--ignore-eos"));
        Assert.Equal(5, Tokens(json).Length);
        Assert.Equal("length", json.GetProperty("finish_reason").GetString());
        Assert.Equal(5, json.GetProperty("steps").GetArrayLength());
        Assert.All(json.GetProperty("steps").EnumerateArray(), s => Assert.Equal(5, s.GetProperty("top").GetArrayLength()));
    }

    [Fact]
    public void Generate_GreedyTwice_SameTokens()
    {
        string[] args = ["generate", "--prompt-ids", "1,2,3", "--max-tokens", "8", "--temperature", "0", "--json", "--ignore-eos"];
        var first = Json(CliHarness.Run(args));
        var second = Json(CliHarness.Run(args));
        Assert.Equal(8, Tokens(first).Length);
        Assert.Equal(Tokens(first), Tokens(second));
        Assert.Equal(first.GetProperty("text").GetString(), second.GetProperty("text").GetString());
    }

    [Fact]
    public void Generate_PromptTextSameSeedTwice_SameText()
    {
        string[] args = ["generate", "--prompt", "Hello", "--seed", "7", "--max-tokens", "16"];
        var first = CliHarness.Run(args);
        var second = CliHarness.Run(args);
        Assert.True(first.ExitCode == 0, first.Err);
        Assert.True(second.ExitCode == 0, second.Err);
        Assert.False(string.IsNullOrWhiteSpace(first.Out));
        Assert.Equal(first.Out, second.Out);
        Assert.Contains("tokens, finish:", first.Err); // the summary line goes to stderr, not into the text
    }

    [Fact]
    public void Generate_PromptTextDifferentSeeds_DifferentSamples()
    {
        // Guards the test above: the seed must reach the sampler (same model, same prompt, different draws).
        CliResult Sample(string seed) => CliHarness.Run("generate", "--prompt", "Hello", "--seed", seed, "--max-tokens", "24",
            "--temperature", "1", "--top-k", "0", "--top-p", "1", "--ignore-eos", "--json");
        Assert.NotEqual(Tokens(Json(Sample("7"))), Tokens(Json(Sample("8"))));
        Assert.Equal(Tokens(Json(Sample("7"))), Tokens(Json(Sample("7"))));
    }

    [Fact]
    public void Generate_PromptAndPromptIds_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt", "Hello", "--prompt-ids", "1,2"), "--prompt");

    [Fact]
    public void Generate_NeitherPromptNorPromptIds_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--max-tokens", "3"), "--prompt");

    [Theory]
    [InlineData("1,x", "'x'")]
    [InlineData(",", "empty")]
    [InlineData("1;2", "1;2")]
    [InlineData("99999999999", "99999999999")]
    public void Generate_PromptIdsNotIntegers_ExitCode2(string ids, string expected)
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", ids, "--max-tokens", "2"), "--prompt-ids", expected);

    [Theory]
    [InlineData("1,4096")]
    [InlineData("-1")]
    public void Generate_TokenIdOutsideVocabulary_ExitCode2(string ids)
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", ids, "--max-tokens", "2"), "vocabulary", "4095");

    [Theory]
    [InlineData("0")]
    [InlineData("-3")]
    public void Generate_MaxTokensNotPositive_ExitCode2(string max)
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", max), "max tokens");

    [Fact]
    public void Generate_MaxTokensBeyondContext_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "100000"), "context length 512");

    [Fact]
    public void Generate_PromptPlusMaxTokensOneOverContext_ExitCode2ButExactFitRuns()
    {
        AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "510"), "context length 512");
        // 3 + 509 = 512 fits (stops at once at EOS or runs to the limit; only the validation matters here).
        var ok = CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "509", "--temperature", "0", "--json");
        Assert.True(ok.ExitCode == 0, ok.Err);
    }

    [Fact]
    public void Generate_OverTheContextWithABudget_RefusedBeforeLoadingWithoutOverflow()
    {
        // int.MaxValue new tokens: prompt + max tokens overflowed an int on the way to the placement's context.
        AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", $"{int.MaxValue}", "--gpu-budget", "1GiB", "--device", "cpu"),
            "context length 512");
    }

    [Fact]
    public void Generate_SampledWithoutSeed_SaysTheSeedThatRepeatsIt()
    {
        var first = CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "12", "--temperature", "1.5", "--json");
        Assert.True(first.ExitCode == 0, first.Err);
        var m = System.Text.RegularExpressions.Regex.Match(first.Err, @"sampling seed (\d+) \(--seed \1 repeats this run\)");
        Assert.True(m.Success, first.Err);
        var again = CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "12", "--temperature", "1.5", "--json", "--seed", m.Groups[1].Value);
        Assert.True(again.ExitCode == 0, again.Err);
        using var a = System.Text.Json.JsonDocument.Parse(first.Out);
        using var b = System.Text.Json.JsonDocument.Parse(again.Out);
        Assert.Equal(a.RootElement.GetProperty("tokens").GetRawText(), b.RootElement.GetProperty("tokens").GetRawText());
        Assert.DoesNotContain("sampling seed", again.Err); // given, not drawn
        Assert.DoesNotContain("sampling seed", CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "2", "--temperature", "0").Err); // greedy
    }

    [Fact]
    public void Generate_TopKMinusOne_IsOff()
    {
        // vLLM's and the server's "off": the same tokens as --top-k 0.
        var off = CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "6", "--top-k", "-1", "--seed", "3", "--json");
        var zero = CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "6", "--top-k", "0", "--seed", "3", "--json");
        Assert.True(off.ExitCode == 0, off.Err);
        using var a = System.Text.Json.JsonDocument.Parse(off.Out);
        using var b = System.Text.Json.JsonDocument.Parse(zero.Out);
        Assert.Equal(b.RootElement.GetProperty("tokens").GetRawText(), a.RootElement.GetProperty("tokens").GetRawText());
        AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--top-k", "-2"), "top_k");
    }

    [Fact]
    public void Generate_MaxTokensNotANumber_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--max-tokens", "lots"), "lots");

    [Fact]
    public void Generate_NegativeTemperature_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--temperature", "-1"), "temperature");

    [Theory]
    [InlineData("0")]
    [InlineData("1.5")]
    public void Generate_TopPOutOfRange_ExitCode2(string topP)
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--top-p", topP), "top_p");

    [Fact]
    public void Generate_NegativeTopK_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--top-k", "-2"), "top_k");

    [Fact]
    public void Generate_EmptyStopString_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--stop", ""), "stop");

    [Fact]
    public void Generate_ModelDirectoryMissing_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--model", "/nonexistent", "--prompt-ids", "1"), "/nonexistent");

    [Theory]
    [InlineData("{ \"architectures\": [")]
    [InlineData("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\"}")]
    public void Generate_ModelWithCorruptConfig_ExitCode2(string config)
    {
        File.WriteAllText(Path.Combine(_dir, "config.json"), config);
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1"), "config.json");
    }

    [Fact]
    public void Generate_ModelWithoutWeights_ExitCode2()
    {
        File.Copy(Path.Combine(DefaultModel.Directory, "config.json"), Path.Combine(_dir, "config.json"));
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1"), "model.safetensors");
    }

    [Fact]
    public void Generate_ModelWithTruncatedWeights_ExitCode2()
    {
        foreach (string f in Directory.GetFiles(DefaultModel.Directory))
            File.Copy(f, Path.Combine(_dir, Path.GetFileName(f)));
        string weights = Path.Combine(_dir, "model.safetensors");
        using (var s = File.Open(weights, FileMode.Open)) s.SetLength(s.Length / 2);
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1"), weights);
    }

    [Fact]
    public void Generate_MistypedModelUnderABudget_SaysTheDirectoryIsMissing()
        => AssertUserError(CliHarness.Run("generate", "--model", "/nonexistent/mixtral", "--gpu-budget", "1GiB", "--prompt", "hi"),
            "/nonexistent/mixtral", "does not exist");

    [Fact]
    public void Generate_StopStringsOnAModelWithoutTokenizer_SaysTheyCannotMatch()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1,2", "--max-tokens", "3", "--stop", "x"),
            "stop strings need the model's tokenizer");
    }

    [Fact]
    public void Generate_StopWithBeamSearch_IsRefusedBeforeLoading()
        => AssertUserError(CliHarness.Run("generate", "--model", "/nonexistent/model", "--prompt-ids", "1,2", "--beam-width", "3", "--stop", "x"),
            "--stop does not apply to beam search");

    [Fact]
    public void Generate_BeamSearchText_ReadsAsTheContinuationOfThePrompt()
    {
        var r = CliHarness.Run("generate", "--prompt", "The capital of France is", "--max-tokens", "6", "--beam-width", "2", "--ignore-eos", "--json");
        var json = Json(r);
        // The same continuation as the whole sequence decodes to, after the prompt's own text (its leading space kept).
        using var loaded = Fiddler.Kernels.Loading.ModelLoader.Load(DefaultModel.Directory,
            new Fiddler.Kernels.Loading.LoadOptions(TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32));
        var tok = loaded.Tokenizer!;
        int[] prompt = json.GetProperty("prompt_ids").EnumerateArray().Select(t => t.GetInt32()).ToArray();
        string whole = tok.Decode([.. prompt, .. Tokens(json)]), before = tok.Decode(prompt);
        Assert.Equal(whole[before.Length..], json.GetProperty("text").GetString());
    }

    [Fact]
    public void Generate_ConfigNamesAnUnknownDtype_NamesConfigJsonAndTheDtype()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config() with { TorchDtype = "float8_e4m3fn" });
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1,2", "--max-tokens", "2"),
            Path.Combine(_dir, "config.json"), "float8_e4m3fn", "bfloat16, float16 or float32");
        // An explicit dtype overrides the config's: the same checkpoint then loads.
        var ok = CliHarness.Run("generate", "--model", _dir, "--dtype", "float32", "--prompt-ids", "1,2", "--max-tokens", "2", "--temperature", "0", "--json");
        Assert.True(ok.ExitCode == 0, ok.Err);
    }

    [Fact]
    public void Generate_TextPromptOnModelWithoutTokenizer_ExitCode2()
    {
        TinyCheckpoint.Write(_dir, TinyCheckpoint.Config());
        AssertUserError(CliHarness.Run("generate", "--model", _dir, "--prompt", "Hello"), "--prompt-ids");
        var ok = CliHarness.Run("generate", "--model", _dir, "--prompt-ids", "1,2", "--max-tokens", "3", "--temperature", "0", "--json");
        Assert.True(ok.ExitCode == 0, ok.Err);
    }

    [Fact]
    public void Generate_UnknownDevice_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--device", "tpu"), "tpu");

    [Theory]
    [InlineData("int8")]
    [InlineData("float64")]
    public void Generate_UnsupportedDtype_ExitCode2(string dtype)
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--dtype", dtype), dtype);

    [Fact]
    public void Generate_UnknownOption_ExitCode2()
        => AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1", "--frobnicate"), "--frobnicate");

    [Fact]
    public void Run_NoCommand_ExitCode2()
        => AssertUserError(CliHarness.Run(), "command");

    [Fact]
    public void Generate_CudaWithoutGpu_ExitCode2MentioningCudaThenCpuStillWorks()
    {
        // In-process the CUDA bootstrap must not re-execute the test host (it would only if a python3 torch were
        // found, which this GPU-less machine lacks); the marker makes that certain.
        const string marker = "FIDDLER_CUDA_BOOTSTRAPPED";
        string? old = Environment.GetEnvironmentVariable(marker);
        Environment.SetEnvironmentVariable(marker, "1");
        try
        {
            if (TorchSharp.torch.cuda.is_available()) return; // only meaningful without a usable GPU
            AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2", "--device", "cuda"), "CUDA");
            AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,2", "--device", "cuda:1"), "CUDA");
        }
        finally { Environment.SetEnvironmentVariable(marker, old); }

        var json = Json(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "3", "--temperature", "0",
            "--json", "--ignore-eos"));
        Assert.Equal(3, Tokens(json).Length);
    }

    [Fact]
    public void Generate_AfterErrors_GoodRunStillWorks()
    {
        AssertUserError(CliHarness.Run("generate", "--model", "/nonexistent", "--prompt-ids", "1"));
        AssertUserError(CliHarness.Run("generate", "--prompt-ids", "1,4096"));
        var json = Json(CliHarness.Run("generate", "--prompt-ids", "1,2,3", "--max-tokens", "4", "--temperature", "0",
            "--json", "--ignore-eos"));
        Assert.Equal(4, Tokens(json).Length);
    }
}

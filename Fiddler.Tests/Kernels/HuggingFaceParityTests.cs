using System.Text.Json;
using Fiddler.Kernels.Text;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Kernels;

/// <summary>
/// Parity with Hugging Face transformers 5.17 on the fixtures Fixtures/make_fixtures.py wrote (random tiny Mixtrals
/// that differ in GQA ratio, top-k, expert count, sliding window and rope theta). The same checks run on CUDA through
/// <c>fiddler verify --device cuda</c> on a GPU host.
/// </summary>
public class HuggingFaceParityTests
{
    public static string FixturesDir => Path.Combine(AppContext.BaseDirectory, "Fixtures");

    public static TheoryData<string> Models()
    {
        var data = new TheoryData<string>();
        foreach (var dir in FixtureParity.ModelDirectories(FixturesDir)) data.Add(Path.GetFileName(dir));
        return data;
    }

    [Fact]
    public void Fixtures_AtLeastThreeModels_Present() => Assert.True(Models().Count >= 3, $"fixture models missing under {FixturesDir}");

    [Theory]
    [MemberData(nameof(Models))]
    public void Check_Fp32AndBf16OnCpu_MatchTransformers(string model)
    {
        var reports = FixtureParity.Check(Path.Combine(FixturesDir, model), CPU);
        Assert.NotEmpty(reports);
        foreach (var r in reports)
        {
            Assert.True(r.PrefillRelative <= 1e-4, $"{model} p{r.Prompt}: prefill logits relative error {r.PrefillRelative:E2}");
            Assert.True(r.StepRelative <= 1e-4, $"{model} p{r.Prompt}: step logits relative error {r.StepRelative:E2}");
            Assert.True(r.GreedyEqual, $"{model} p{r.Prompt}: greedy tokens differ: {r.Detail}");
            Assert.True(r.Bf16Top5Agree, $"{model} p{r.Prompt}: bf16 diverged at step {r.Bf16FirstDivergence} outside the top-5: {r.Detail}");
        }
    }

    public sealed record TokenizerCase(string text, int[] ids, int[] ids_no_special, string decoded);

    [Fact]
    public void Encode_FixtureTexts_ByteExactWithHuggingFaceTokenizers()
    {
        string casesPath = Path.Combine(FixturesDir, "tokenizer_cases.json");
        var cases = JsonSerializer.Deserialize<TokenizerCase[]>(File.ReadAllText(casesPath))!;
        Assert.NotEmpty(cases);
        using var tokenizer = new HfTokenizer(Path.Combine(FixturesDir, "tokenizer"));
        foreach (var c in cases)
        {
            Assert.Equal(c.ids, tokenizer.Encode(c.text, addSpecialTokens: true));
            Assert.Equal(c.ids_no_special, tokenizer.Encode(c.text, addSpecialTokens: false));
            Assert.Equal(c.decoded, tokenizer.Decode(c.ids, skipSpecialTokens: true));
        }
    }
}

using Fiddler.Actors.Engine;
using Fiddler.Kernels.Config;
using Xunit;

namespace Fiddler.Tests.Actors.Engine;

public sealed class WarmupPlanTests
{
    [Fact]
    public void PromptLengths_Mixtral_OnePromptPerBatchSize()
    {
        var mixtral = MixtralConfig.Named("mixtral-8x7b");
        // 8 experts, top-2: 8, 32 and 128 tokens per chosen expert on average (half of 16 and of 64, twice 64).
        Assert.Equal([32, 128, 512], WarmupPlan.PromptLengths(mixtral, 4096));
        // Each leaves room for the decode steps; lengths that would not fit are shortened, and repeats dropped.
        // Each leaves room for the token its prefill generates and the decode steps after it.
        Assert.Equal([32, 128, 191], WarmupPlan.PromptLengths(mixtral, 200));
        Assert.Equal([31], WarmupPlan.PromptLengths(mixtral, 40));
        Assert.Equal([11], WarmupPlan.PromptLengths(mixtral, 20));
        Assert.Equal([1], WarmupPlan.PromptLengths(mixtral, WarmupPlan.DecodeSteps + 2));
        Assert.Empty(WarmupPlan.PromptLengths(mixtral, WarmupPlan.DecodeSteps + 1));
        // The model's own context bounds it too.
        Assert.Equal([32, 55], WarmupPlan.PromptLengths(mixtral with { MaxPositionEmbeddings = 64 }, 4096));
    }

    [Fact]
    public void PromptLengths_FollowTheModelsExpertsAndTopK()
    {
        var config = MixtralConfig.Named("mixtral-8x7b") with { NumLocalExperts = 4, NumExpertsPerTok = 1 };
        Assert.Equal([32, 128, 512], WarmupPlan.PromptLengths(config, 4096));
        Assert.Equal([22, 86, 342], WarmupPlan.PromptLengths(config with { NumLocalExperts = 8, NumExpertsPerTok = 3 }, 4096));
        Assert.Throws<ArgumentException>(() => WarmupPlan.PromptLengths(config with { NumExpertsPerTok = 0 }, 4096));
    }

    [Fact]
    public void Prompt_IsRepeatableAndAvoidsSpecialTokens()
    {
        int[] a = WarmupPlan.Prompt(500, 32000, seed: 1);
        Assert.Equal(500, a.Length);
        Assert.Equal(a, WarmupPlan.Prompt(500, 32000, seed: 1));
        Assert.NotEqual(a, WarmupPlan.Prompt(500, 32000, seed: 2));
        Assert.All(a, id => Assert.InRange(id, 3, 31999));
        Assert.Throws<ArgumentOutOfRangeException>(() => WarmupPlan.Prompt(0, 32000, seed: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => WarmupPlan.Prompt(4, 3, seed: 1));
    }
}

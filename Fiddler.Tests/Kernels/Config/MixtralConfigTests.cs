using Xunit;
using System.Text.Json.Nodes;
using Fiddler.Kernels.Config;
using Fiddler.Tests.Support;

namespace Fiddler.Tests.Kernels.Config;

public sealed class MixtralConfigTests : IDisposable
{
    /// <summary>Hub layout: rope_theta and torch_dtype at the top level, head_dim 8, GQA 8/2, top-3 of 6 experts.</summary>
    private static readonly string HubFixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3", "config.json");

    /// <summary>transformers-5 layout: rope_parameters.rope_theta and dtype, head_dim null, MHA, top-1 of 4 experts.</summary>
    private static readonly string Hf5Fixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-mha-top1", "config.json");

    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Writes a copy of <paramref name="fixture"/> edited by <paramref name="edit"/> and returns its path.</summary>
    private string Variant(string fixture, Action<JsonObject> edit)
    {
        var json = JsonNode.Parse(File.ReadAllText(fixture))!.AsObject();
        edit(json);
        string path = Path.Combine(_dir, "config.json");
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    private string Raw(string text)
    {
        string path = Path.Combine(_dir, "config.json");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Load_HubLayout_ReadsRopeThetaAndTorchDtype()
    {
        var c = MixtralConfig.Load(HubFixture);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal("float32", c.TorchDtype);
        Assert.Null(c.Dtype);
        Assert.Equal("float32", c.CheckpointDtype);
        Assert.Null(c.RopeParameters);
        Assert.Equal(512, c.VocabSize);
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(40, c.IntermediateSize);
        Assert.Equal(3, c.NumHiddenLayers);
        Assert.Equal(8, c.NumAttentionHeads);
        Assert.Equal(2, c.NumKeyValueHeads);
        Assert.Equal(8, c.HeadDim);
        Assert.Equal(6, c.NumLocalExperts);
        Assert.Equal(3, c.NumExpertsPerTok);
        Assert.Equal(256, c.MaxPositionEmbeddings);
        Assert.Null(c.SlidingWindow);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Load_Transformers5Layout_ReadsRopeParametersAndDtype()
    {
        var c = MixtralConfig.Load(Hf5Fixture);
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.Null(c.RopeThetaRaw);
        Assert.Equal("default", c.RopeParameters?.RopeType);
        Assert.Equal("float32", c.Dtype);
        Assert.Null(c.TorchDtype);
        Assert.Equal("float32", c.CheckpointDtype);
        Assert.Null(c.HeadDimRaw);
        Assert.Equal(16, c.HeadDim); // hidden_size 64 / 4 heads
        Assert.Equal(4, c.NumKeyValueHeads);
        Assert.Equal(1, c.NumExpertsPerTok);
        Assert.Equal(4, c.NumLocalExperts);
        Assert.Equal(56, c.IntermediateSize);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Load_RopeParametersAndTopLevelRopeTheta_RopeParametersWin()
    {
        var c = MixtralConfig.Load(Variant(Hf5Fixture, j => j["rope_theta"] = 12345.0));
        Assert.Equal(1_000_000.0, c.RopeTheta);
    }

    [Fact]
    public void Load_DtypeAndTorchDtypeBoth_DtypeWins()
    {
        var c = MixtralConfig.Load(Variant(Hf5Fixture, j => { j["dtype"] = "bfloat16"; j["torch_dtype"] = "float16"; }));
        Assert.Equal("bfloat16", c.CheckpointDtype);
    }

    [Fact]
    public void Load_NoRopeThetaAnywhere_DefaultsToMixtralsMillion()
    {
        var c = MixtralConfig.Load(Variant(HubFixture, j => j.Remove("rope_theta")));
        Assert.Equal(1e6, c.RopeTheta);
    }

    [Fact]
    public void Load_NoNumKeyValueHeads_DefaultsToAttentionHeads()
    {
        var c = MixtralConfig.Load(Variant(HubFixture, j => j.Remove("num_key_value_heads")));
        Assert.Equal(8, c.NumKeyValueHeads);
    }

    [Fact]
    public void Load_EosTokenIdInt_GivesOneId()
    {
        var c = MixtralConfig.Load(Variant(HubFixture, j => j["eos_token_id"] = 7));
        Assert.Equal([7], c.EosTokenIds);
    }

    [Fact]
    public void Load_EosTokenIdList_GivesAllIds()
    {
        var c = MixtralConfig.Load(Variant(Hf5Fixture, j => j["eos_token_id"] = new JsonArray(2, 5, 511)));
        Assert.Equal([2, 5, 511], c.EosTokenIds);
    }

    [Fact]
    public void Load_EosTokenIdNull_GivesNoIds()
    {
        var c = MixtralConfig.Load(Variant(HubFixture, j => j["eos_token_id"] = null));
        Assert.Empty(c.EosTokenIds);
    }

    [Theory]
    [InlineData(512)]
    [InlineData(-1)]
    public void Load_EosTokenIdOutsideVocabulary_ThrowsNamingEosTokenId(int eos)
    {
        string path = Variant(HubFixture, j => j["eos_token_id"] = new JsonArray(2, eos));
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("eos_token_id", e.Message);
    }

    [Fact]
    public void Load_LlamaArchitecture_ThrowsNamingArchitecture()
    {
        string path = Variant(HubFixture, j =>
        {
            j["architectures"] = new JsonArray("LlamaForCausalLM");
            j["model_type"] = "llama";
        });
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("architecture", e.Message);
        Assert.Contains("LlamaForCausalLM", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Load_NoArchitectureOrModelType_Throws()
    {
        string path = Variant(HubFixture, j => { j.Remove("architectures"); j.Remove("model_type"); });
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("architecture", e.Message);
    }

    [Fact]
    public void Load_MissingFile_ThrowsNamingPath()
    {
        string path = Path.Combine(_dir, "nope", "config.json");
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Theory]
    [InlineData("{ \"architectures\": [\"MixtralForCausalLM\"], ")]
    [InlineData("not json at all")]
    [InlineData("")]
    [InlineData("[1, 2, 3]")]
    public void Load_InvalidJson_ThrowsModelConfigException(string text)
    {
        string path = Raw(text);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void Load_JsonNull_ThrowsEmpty()
    {
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(Raw("null")));
        Assert.Contains("empty", e.Message);
    }

    [Fact]
    public void Load_FieldOfWrongType_ThrowsNamingField()
    {
        string path = Variant(HubFixture, j => j["hidden_size"] = "big");
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("hidden_size", e.Message);
        Assert.IsAssignableFrom<System.Text.Json.JsonException>(e.InnerException);
    }

    [Fact]
    public void Load_HeadsNotDivisibleByKvHeads_ThrowsNamingBothFields()
    {
        string path = Variant(HubFixture, j => j["num_key_value_heads"] = 3);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("num_attention_heads 8", e.Message);
        Assert.Contains("num_key_value_heads 3", e.Message);
    }

    [Fact]
    public void Load_HiddenSizeNotDivisibleByHeadsWithoutHeadDim_ThrowsNamingHiddenSize()
    {
        string path = Variant(Hf5Fixture, j => j["hidden_size"] = 66);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("hidden_size 66", e.Message);
    }

    [Fact]
    public void Load_OddHeadDim_ThrowsNamingHeadDim()
    {
        string path = Variant(HubFixture, j => j["head_dim"] = 7);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("head_dim 7", e.Message);
    }

    [Fact]
    public void Load_TopKAboveExperts_ThrowsNamingBothFields()
    {
        string path = Variant(HubFixture, j => j["num_experts_per_tok"] = 7);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("num_experts_per_tok 7", e.Message);
        Assert.Contains("num_local_experts 6", e.Message);
    }

    [Fact]
    public void Load_TopKEqualToExperts_Loads()
    {
        var c = MixtralConfig.Load(Variant(HubFixture, j => j["num_experts_per_tok"] = 6));
        Assert.Equal(6, c.NumExpertsPerTok);
    }

    [Theory]
    [InlineData("gelu")]
    [InlineData("relu")]
    [InlineData("SiLU")]
    public void Load_NonSiluActivation_ThrowsNamingHiddenAct(string act)
    {
        string path = Variant(HubFixture, j => j["hidden_act"] = act);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("hidden_act", e.Message);
        Assert.Contains(act, e.Message);
    }

    [Fact]
    public void Load_RopeScalingLinear_ThrowsNamingRopeScaling()
    {
        string path = Variant(HubFixture, j => j["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 2.0 });
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("rope_scaling", e.Message);
    }

    [Fact]
    public void Load_RopeScalingNotAnObject_ThrowsNamingRopeScaling()
    {
        string path = Variant(HubFixture, j => j["rope_scaling"] = 2.0);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("rope_scaling", e.Message);
    }

    [Fact]
    public void Load_RopeScalingNullOrDefault_Loads()
    {
        Assert.NotNull(MixtralConfig.Load(Variant(HubFixture, j => j["rope_scaling"] = null)));
        Assert.NotNull(MixtralConfig.Load(Variant(HubFixture, j => j["rope_scaling"] = new JsonObject { ["rope_type"] = "default" })));
    }

    [Fact]
    public void Load_RopeParametersYarn_ThrowsNamingRopeType()
    {
        string path = Variant(Hf5Fixture, j => j["rope_parameters"]!["rope_type"] = "yarn");
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("rope_type 'yarn'", e.Message);
    }

    [Theory]
    [InlineData("vocab_size", 0)]
    [InlineData("vocab_size", -1)]
    [InlineData("hidden_size", 0)]
    [InlineData("hidden_size", -64)]
    [InlineData("intermediate_size", 0)]
    [InlineData("num_hidden_layers", 0)]
    [InlineData("num_hidden_layers", -2)]
    [InlineData("num_attention_heads", 0)]
    [InlineData("num_attention_heads", -4)]
    [InlineData("num_key_value_heads", 0)]
    [InlineData("num_local_experts", 0)]
    [InlineData("num_experts_per_tok", 0)]
    [InlineData("max_position_embeddings", 0)]
    [InlineData("max_position_embeddings", -1)]
    [InlineData("sliding_window", 0)]
    public void Load_NonPositiveSize_ThrowsNamingField(string field, int value)
    {
        // The transformers-5 fixture: head_dim is null there, so a zero head count must not reach a division first.
        string path = Variant(Hf5Fixture, j => j[field] = value);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains($"{field} must be > 0", e.Message);
        Assert.Contains(value.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-8)]
    public void Load_NonPositiveHeadDim_ThrowsNamingHeadDim(int value)
    {
        string path = Variant(HubFixture, j => j["head_dim"] = value);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains("head_dim must be > 0", e.Message);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("vocab_size")]
    [InlineData("num_local_experts")]
    public void Load_RequiredSizeMissing_ThrowsNamingField(string field)
    {
        string path = Variant(HubFixture, j => j.Remove(field));
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains(field, e.Message);
    }

    [Theory]
    [InlineData("rms_norm_eps", 0.0)]
    [InlineData("rms_norm_eps", -1e-5)]
    [InlineData("rope_theta", 0.0)]
    [InlineData("rope_theta", -10000.0)]
    public void Load_NonPositiveFloat_ThrowsNamingField(string field, double value)
    {
        string path = Variant(HubFixture, j => j[field] = value);
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Load(path));
        Assert.Contains(field, e.Message);
    }

    [Fact]
    public void Validate_Mixtral8x7B_Passes()
    {
        MixtralConfig.Mixtral8x7B.Validate();
        Assert.Equal(128, MixtralConfig.Mixtral8x7B.HeadDim);
        Assert.Same(MixtralConfig.Mixtral8x7B, MixtralConfig.Named("Mixtral-8x7B"));
    }

    [Fact]
    public void Named_Unknown_ThrowsListingKnownNames()
    {
        var e = Assert.Throws<ModelConfigException>(() => MixtralConfig.Named("llama-7b"));
        Assert.Contains("llama-7b", e.Message);
        Assert.Contains("mixtral-8x7b", e.Message);
    }
}

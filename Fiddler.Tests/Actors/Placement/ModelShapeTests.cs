using Xunit;
using Fiddler.Actors.Placement;
using Fiddler.Kernels.Config;

namespace Fiddler.Tests.Actors.Placement;

public sealed class ModelShapeTests
{
    public static ModelShape Mixtral => ModelShape.From(MixtralConfig.Mixtral8x7B, bytesPerElement: 2);

    [Fact]
    public void From_Mixtral8x7B_CopiesEveryDimension()
    {
        Assert.Equal(new ModelShape(Layers: 32, Experts: 8, Hidden: 4096, Intermediate: 14336, Vocab: 32000, Heads: 32,
            KvHeads: 8, HeadDim: 128, BytesPerElement: 2, TieEmbeddings: false), Mixtral);
    }

    [Fact]
    public void ExpertBytes_Mixtral8x7BBf16_Is352MB()
    {
        Assert.Equal(352_321_536L, Mixtral.ExpertBytes); // 3 × 4096 × 14336 × 2
        Assert.Equal(256 * 352_321_536L, Mixtral.AllExpertsBytes);
    }

    [Fact]
    public void NonExpertBytes_Mixtral8x7BBf16_Is3GiB()
    {
        // embed + lm_head 2×32000×4096; per layer q,o 2×4096×4096 + k,v 2×4096×1024 + 2 norms + gate 8×4096; final norm.
        long parameters = 2L * 32000 * 4096 + 32 * (2L * 4096 * 4096 + 2L * 4096 * 1024 + 2 * 4096 + 8 * 4096) + 4096;
        Assert.Equal(1_605_636_096L, parameters);
        Assert.Equal(2 * parameters, Mixtral.NonExpertBytes);
        Assert.Equal(3.0, MemoryBudget.ToGiB(Mixtral.NonExpertBytes), 1); // NOTES.md: "non-expert part 3.0 GiB"
        // Whole model: 46.7 B parameters, 93.4 GB in bf16 (NOTES.md).
        Assert.Equal(93.4, (Mixtral.NonExpertBytes + Mixtral.AllExpertsBytes) / 1e9, 1);
    }

    [Fact]
    public void NonExpertBytes_TiedEmbeddings_CountsEmbeddingOnce()
    {
        var untied = new ModelShape(2, 4, 32, 48, 96, 4, 2, 8, 4, false);
        var tied = untied with { TieEmbeddings = true };
        Assert.Equal(96 * 32 * 4, untied.NonExpertBytes - tied.NonExpertBytes);
        // Tiny: embed 96×32 ×2, per layer q,o 2×32×32 + k,v 2×32×16 + norms 64 + gate 4×32, final norm 32; fp32.
        Assert.Equal((2 * 96 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 64 + 4 * 32) + 32) * 4L, untied.NonExpertBytes);
        Assert.Equal(3L * 32 * 48 * 4, untied.ExpertBytes);
    }

    [Fact]
    public void KvCacheBytes_Mixtral4096Positions_IsHalfGiB() =>
        Assert.Equal(1L << 29, Mixtral.KvCacheBytes(4096)); // 2 (K,V) × 32 layers × 8 kv heads × 128 × 4096 × 2 bytes

    [Fact]
    public void Fingerprint_AnyFieldChanged_Differs()
    {
        Assert.Equal(Mixtral.Fingerprint, ModelShape.From(MixtralConfig.Mixtral8x7B, 2).Fingerprint);
        Assert.Equal(16, Mixtral.Fingerprint.Length);
        Assert.NotEqual(Mixtral.Fingerprint, (Mixtral with { BytesPerElement = 4 }).Fingerprint);
        Assert.NotEqual(Mixtral.Fingerprint, (Mixtral with { Intermediate = 14337 }).Fingerprint);
        Assert.NotEqual(Mixtral.Fingerprint, (Mixtral with { TieEmbeddings = true }).Fingerprint);
    }

    [Fact]
    public void From_BadElementWidth_Throws() =>
        Assert.Throws<ArgumentException>(() => ModelShape.From(MixtralConfig.Mixtral8x7B, 3));

    [Fact]
    public void ActivationReserve_GrowsWithTheContext_FromTheWorkspaceFloor()
    {
        // Mixtral bf16: 32·4096 + 4·14336·2 + 2·32·128·2 = 262,144 bytes per token, plus 24 bytes per token² for the mask and attention, plus the runtime reserve (448 MiB).
        Assert.Equal(ModelShape.RuntimeReserveBytes, Mixtral.ActivationReserveBytes(0));
        Assert.Equal(900L * 262_144 + 24L * 900 * 900 + ModelShape.RuntimeReserveBytes, Mixtral.ActivationReserveBytes(900));
        Assert.InRange(Mixtral.ActivationReserveBytes(900) / 1e9, 0.72, 0.73);
        Assert.InRange(Mixtral.ActivationReserveBytes(4096) / 1e9, 1.94, 1.95);
        Assert.Throws<ArgumentOutOfRangeException>(() => Mixtral.ActivationReserveBytes(-1));
        // Four beams: four prompts' activations, one (broadcast) mask, one workspace.
        Assert.Equal(4 * 900L * 262_144 + 24L * 900 * 900 + ModelShape.RuntimeReserveBytes, Mixtral.ActivationReserveBytes(900, sequences: 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mixtral.ActivationReserveBytes(900, sequences: 0));
    }

    [Fact]
    public void ActivationReserve_ToyModel_FloorIsHalfItsNonExpertWeights()
    {
        var toy = Mixtral with { Layers = 1, Hidden = 16, Intermediate = 32, Vocab = 64, Heads = 2, KvHeads = 1, HeadDim = 8 };
        Assert.Equal(toy.NonExpertBytes / 2, toy.ActivationReserveBytes(0));
    }
}

using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>Pre-norm decoder layer as HF MixtralDecoderLayer: x + attn(norm(x)), then h + moe(norm(h)).</summary>
public sealed class MixtralDecoderLayer : nn.Module
{
    [ComponentName(Name = "input_layernorm")] private readonly MixtralRMSNorm _inputNorm;
    [ComponentName(Name = "self_attn")] private readonly MixtralAttention _attention;
    [ComponentName(Name = "post_attention_layernorm")] private readonly MixtralRMSNorm _postAttentionNorm;
    [ComponentName(Name = "block_sparse_moe")] private readonly MixtralSparseMoeBlock _moe;

    public MixtralDecoderLayer(MixtralConfig c, int layer, ScalarType dtype, Device device, ExpertResidency? residency = null)
        : base(nameof(MixtralDecoderLayer))
    {
        _inputNorm = new MixtralRMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _attention = new MixtralAttention(c, layer, dtype, device);
        _postAttentionNorm = new MixtralRMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _moe = new MixtralSparseMoeBlock(c, layer, dtype, device, residency);
        RegisterComponents();
    }

    public MixtralSparseMoeBlock Moe => _moe;

    public Tensor Forward(Tensor x, long start, Tensor cos, Tensor signedSin, KvCache cache)
    {
        using var scope = NewDisposeScope();
        Tensor h, y;
        using (StageTimer.Stage("attention")) h = x.add(_attention.Forward(_inputNorm.forward(x), start, cos, signedSin, cache), TensorDims.One); // add(t) would make a Scalar 1 each time (see TensorDims)
        using (StageTimer.Stage("moe")) y = h.add(_moe.forward(_postAttentionNorm.forward(h)), TensorDims.One);
        return y.MoveToOuterDisposeScope();
    }
}

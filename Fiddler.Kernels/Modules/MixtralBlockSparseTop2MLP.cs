using Fiddler.Kernels.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>One SwiGLU expert, as HF MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x).</summary>
public sealed class MixtralBlockSparseTop2MLP : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "w1")] private readonly Linear _gate;
    [ComponentName(Name = "w2")] private readonly Linear _down;
    [ComponentName(Name = "w3")] private readonly Linear _up;

    public MixtralBlockSparseTop2MLP(MixtralConfig c, ScalarType dtype, Device device, bool pinned = false) : base(nameof(MixtralBlockSparseTop2MLP))
    {
        _gate = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device, pinned);
        _down = new Linear(c.IntermediateSize, c.HiddenSize, dtype, device, pinned);
        _up = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device, pinned);
        RegisterComponents();
    }

    public Linear Gate => _gate;
    public Linear Down => _down;
    public Linear Up => _up;

    public Device Device => _gate.Weight.device;

    public override Tensor forward(Tensor x) => Compute(x, _gate.Weight, _up.Weight, _down.Weight);

    /// <summary>The SwiGLU math on any copy of an expert's weights (resident, or staged by a weight transfer).</summary>
    public static Tensor Compute(Tensor x, Tensor w1, Tensor w3, Tensor w2)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.silu(nn.functional.linear(x, w1)) * nn.functional.linear(x, w3);
        return nn.functional.linear(h, w2).MoveToOuterDisposeScope();
    }
}

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

    public MixtralBlockSparseTop2MLP(MixtralConfig c, ScalarType dtype, Device device) : base(nameof(MixtralBlockSparseTop2MLP))
    {
        _gate = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device);
        _down = new Linear(c.IntermediateSize, c.HiddenSize, dtype, device);
        _up = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device);
        RegisterComponents();
    }

    public Linear Gate => _gate;
    public Linear Down => _down;
    public Linear Up => _up;

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.silu(_gate.forward(x)) * _up.forward(x);
        return _down.forward(h).MoveToOuterDisposeScope();
    }
}

using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>Token embedding table (HF nn.Embedding), filled by the loader.</summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;

    public Embedding(long vocab, long hidden, ScalarType dtype, Device device) : base(nameof(Embedding))
    {
        _weight = Weights.Empty([vocab, hidden], dtype, device);
        RegisterComponents();
    }

    public Tensor Weight => _weight;

    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var shape = ids.Dims().Append(_weight.size(1)).ToArray();
        return _weight.index_select(0, ids.flatten()).view(shape).MoveToOuterDisposeScope();
    }
}

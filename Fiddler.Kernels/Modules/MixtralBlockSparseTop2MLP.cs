using Fiddler.Kernels.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>
/// One SwiGLU expert, as HF MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x).
/// <para>
/// On the compute device (not in pinned host memory) w1 and w3 are row blocks of one fused weight [2I, H] (the
/// checkpoint fills them by name): one matmul instead of two per expert and token batch, one kernel launch fewer where
/// a decode step is bound by the host's launches. Host experts keep three separate weights: the CPU kernel and the
/// weight copies read them as they are.
/// </para>
/// </summary>
public sealed class MixtralBlockSparseTop2MLP : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "w1")] private readonly Linear _gate;
    [ComponentName(Name = "w2")] private readonly Linear _down;
    [ComponentName(Name = "w3")] private readonly Linear _up;
    private readonly Tensor? _gateUp;
    private readonly long _intermediate;

    /// <param name="pinned">Page-locked host memory (host experts on a CUDA machine).</param>
    /// <param name="fused">Store w1 and w3 as one [2I, H] weight (experts computed with <see cref="forward"/>); false for
    /// host experts, whose weights the CPU kernel and the weight copies read separately. Pinned weights are never fused.</param>
    /// <param name="hugePages">With <paramref name="pinned"/>: in 2 MiB pages (<see cref="Runtime.HugePages"/>).</param>
    public MixtralBlockSparseTop2MLP(MixtralConfig c, ScalarType dtype, Device device, bool pinned = false, bool fused = true, bool hugePages = false)
        : base(nameof(MixtralBlockSparseTop2MLP))
    {
        _intermediate = c.IntermediateSize;
        if (fused && !pinned)
        {
            _gateUp = empty([2 * c.IntermediateSize, c.HiddenSize], dtype, device);
            _gateUp.DetachFromDisposeScope();
            _gate = new Linear(_gateUp.narrow(0, 0, c.IntermediateSize));
            _up = new Linear(_gateUp.narrow(0, c.IntermediateSize, c.IntermediateSize));
        }
        else
        {
            _gate = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device, pinned, hugePages);
            _up = new Linear(c.HiddenSize, c.IntermediateSize, dtype, device, pinned, hugePages);
        }
        _down = new Linear(c.IntermediateSize, c.HiddenSize, dtype, device, pinned, hugePages);
        RegisterComponents();
    }

    public Linear Gate => _gate;
    public Linear Down => _down;
    public Linear Up => _up;

    /// <summary>The fused [w1; w3] weight [2I, H] whose row blocks are <see cref="Gate"/> and <see cref="Up"/>, or null
    /// for a host expert (separate weights). A registered buffer: disposed with the module.</summary>
    public Tensor? GateUpWeight => _gateUp;

    public Device Device => _gate.Weight.device;

    public override Tensor forward(Tensor x)
    {
        if (_gateUp is null) return Compute(x, _gate.Weight, _up.Weight, _down.Weight);
        using var scope = NewDisposeScope();
        var gu = nn.functional.linear(x, _gateUp);                                    // [n, 2I]
        var h = nn.functional.silu(gu.narrow(-1, 0, _intermediate)) * gu.narrow(-1, _intermediate, _intermediate);
        return nn.functional.linear(h, _down.Weight).MoveToOuterDisposeScope();
    }

    /// <summary>The SwiGLU math on any copy of an expert's weights (resident, or staged by a weight transfer).</summary>
    public static Tensor Compute(Tensor x, Tensor w1, Tensor w3, Tensor w2)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.silu(nn.functional.linear(x, w1)) * nn.functional.linear(x, w3);
        return nn.functional.linear(h, w2).MoveToOuterDisposeScope();
    }
}

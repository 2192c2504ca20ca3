using Fiddler.Kernels.Config;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

// N=tokens (B*T flattened) E=experts K=experts per token D=hidden

/// <summary>
/// Sparse MoE block as HF MixtralSparseMoeBlock: router logits, softmax in fp32, top-k, renormalise, cast to the
/// activation dtype; each chosen expert runs on its tokens and adds its weighted output (experts in index order).
/// </summary>
public sealed class MixtralSparseMoeBlock : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate")] private readonly Linear _router;
    [ComponentName(Name = "experts")] private readonly ModuleList<MixtralBlockSparseTop2MLP> _experts;
    private readonly int _topK;
    private readonly bool[] _resident;
    private readonly MixtralConfig _config;
    private readonly ScalarType _dtype;

    public MixtralSparseMoeBlock(MixtralConfig c, int layer, ScalarType dtype, Device device, ExpertResidency? residency = null)
        : base(nameof(MixtralSparseMoeBlock))
    {
        Layer = layer;
        _config = c;
        _dtype = dtype;
        _router = new Linear(c.HiddenSize, c.NumLocalExperts, dtype, device);
        _experts = new ModuleList<MixtralBlockSparseTop2MLP>();
        _resident = new bool[c.NumLocalExperts];
        for (int e = 0; e < c.NumLocalExperts; e++)
        {
            _resident[e] = residency?.IsResident(layer, e) ?? true;
            _experts.Add(_resident[e] ? new MixtralBlockSparseTop2MLP(c, dtype, device)
                : new MixtralBlockSparseTop2MLP(c, dtype, CPU, residency!.PinHostMemory, fused: false, hugePages: HugePages.ForLayer(layer)));
        }
        _topK = c.NumExpertsPerTok;
        RegisterComponents();
    }

    /// <summary>
    /// Moves host expert <paramref name="e"/> onto <paramref name="device"/> (a no-op when it is resident): its weights
    /// are copied into a new device expert, which takes its place (same parameter names), and the host copy is
    /// unregistered from CUDA (when page-locked) and freed. Before an executor is attached: executors keep host experts'
    /// memory.
    /// </summary>
    public void MakeResident(int e, Device device)
    {
        if (_resident[e]) return;
        var host = _experts[e];
        var moved = new MixtralBlockSparseTop2MLP(_config, _dtype, device);
        using (no_grad())
        {
            moved.Gate.Weight.copy_(host.Gate.Weight);
            moved.Up.Weight.copy_(host.Up.Weight);
            moved.Down.Weight.copy_(host.Down.Weight);
        }
        // The list's slot and its registration (which names the parameters "experts.{e}.…") both move to the new expert.
        _experts[e] = moved;
        _experts.register_module($"{e}", null!);
        _experts.register_module($"{e}", moved);
        _resident[e] = true;
        try { Cuda.HostPinning.Release(host); }
        finally { host.Dispose(); }
    }

    public int Layer { get; }
    public IReadOnlyList<MixtralBlockSparseTop2MLP> Experts => [.. _experts];
    public MixtralBlockSparseTop2MLP Expert(int e) => _experts[e];

    /// <summary>Host-resident experts a token chooses on average if every expert were equally popular (K × host share).</summary>
    public double ExpectedHostExperts => (double)_topK * _resident.Count(r => !r) / _resident.Length;

    /// <summary>True when expert <paramref name="e"/>'s weights live on the compute device.</summary>
    public bool IsResident(int e) => _resident[e];

    /// <summary>Called with each forward's expert assignments (popularity profiling). Null: nothing is called.</summary>
    public Action<int, IReadOnlyList<ExpertAssignment>>? RoutingObserver { get; set; }

    /// <summary>Runs the chosen experts. Null: every expert is resident and runs in place.</summary>
    public IExpertExecutor? Executor { get; set; }

    /// <summary>Routing for N tokens: expert ids [N, K] (int64) and weights [N, K] in the activation dtype.</summary>
    public (Tensor Ids, Tensor Weights) Route(Tensor flat)
    {
        using var scope = NewDisposeScope();
        var logits = _router.forward(flat);                                           // [N, E]
        // HF: softmax over all E in fp32, top-k, divide by their sum. The same weights come from a softmax over the
        // top-k logits alone (softmax is monotonic, and exp(l_i - m) / sum over the top k is that ratio with the common
        // denominator cancelled), in two kernels fewer; they differ from HF's in the last fp32 bits before the cast.
        var (top, ids) = logits.topk(_topK, dim: -1);                                // [N, K]
        var weights = top.softmax(-1, ScalarType.Float32);
        return (ids.MoveToOuterDisposeScope(), weights.to(flat.dtype).MoveToOuterDisposeScope());
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var shape = x.Dims();
        var flat = x.reshape(-1, shape[^1]);                                          // [N, D]
        Tensor ids, weights;
        List<ExpertAssignment> assignments;
        using (StageTimer.Stage("moe.route"))
        {
            (ids, weights) = Route(flat);
            long[] chosen = Executor?.ReadRouting(this, flat, ids) ?? Runtime.HostReadback.Longs(ids);
            assignments = ExpertAssignment.Group(chosen, ids.size(0), ids.size(1), _experts.Count);
        }
        RoutingObserver?.Invoke(Layer, assignments);
        Tensor output;
        using (StageTimer.Stage("moe.experts"))
        {
            // An executor allocates the output itself, after it started the CPU experts.
            if (Executor is not null) output = Executor.Run(this, flat, weights, assignments);
            else
            {
                output = zeros_like(flat);
                foreach (var a in assignments)
                {
                    if (!_resident[a.Expert])
                        throw new InvalidOperationException($"layer {Layer} expert {a.Expert} lives in host memory but no executor is set");
                    a.Accumulate(output, weights, _experts[a.Expert].forward(a.Gather(flat)));
                }
            }
        }
        return output.view(shape).MoveToOuterDisposeScope();
    }
}

/// <summary>The tokens (and which of their top-k slots) routed to one expert.</summary>
public sealed record ExpertAssignment(int Expert, long[] Tokens, long[] Slots)
{
    /// <summary>
    /// This expert's input rows [n, D] of the flattened hidden states: <paramref name="flat"/> itself when that is every
    /// row in order (one decode token: one op fewer per expert; the caller must not dispose the result).
    /// </summary>
    public Tensor Gather(Tensor flat) => IsEveryRowInOrder(Tokens, flat.size(0)) ? flat : flat.index_select(0, DeviceIndices.Get(Tokens, flat.device));

    /// <summary>output[token] += routing weight × expert output, for this expert's rows (as HF: multiply, then index_add).</summary>
    public void Accumulate(Tensor output, Tensor routingWeights, Tensor expertOutput)
    {
        using var scope = NewDisposeScope();
        var y = expertOutput.dtype == output.dtype && expertOutput.device_type == output.device_type && expertOutput.device_index == output.device_index ? expertOutput : expertOutput.to(output.dtype, output.device);
        if (Tokens.Length == 1 && output.size(0) == 1)
        {
            // One decode token: its weight is a view, and one fused multiply-add replaces multiply + index_add (one
            // kernel fewer; the product is not rounded to the activation dtype before the sum, so in bf16 a sum may
            // land one step away from HF's, like any other kernel difference; into zeros it is exactly HF's product).
            output.addcmul_(y, routingWeights.narrow(1, Slots[0], 1), TensorDims.One);
            return;
        }
        var idx = DeviceIndices.Get(Tokens, output.device);
        var slots = DeviceIndices.Get(Slots, output.device);
        var w = routingWeights.index_select(0, idx).gather(1, slots.unsqueeze(1));   // [n, 1]
        output.index_add_(0, idx, y * w, TensorDims.One);
    }

    /// <summary>Whether <paramref name="rows"/> is 0, 1, …, <paramref name="count"/> − 1: every row, in order (a gather
    /// of them is the tensor itself).</summary>
    internal static bool IsEveryRowInOrder(long[] rows, long count)
    {
        if (rows.Length != count) return false;
        for (int i = 0; i < rows.Length; i++) if (rows[i] != i) return false;
        return true;
    }

    /// <summary>Groups expert ids read back as <paramref name="flat"/> (row-major [n, k]; see <see cref="Runtime.HostReadback"/>)
    /// by expert, in expert order.</summary>
    public static List<ExpertAssignment> Group(long[] flat, long n, long k, int experts)
    {
        if (flat.Length != n * k) throw new ArgumentException($"{flat.Length} expert ids for [{n}, {k}]");
        var tokens = new List<long>[experts];
        var slots = new List<long>[experts];
        for (long i = 0; i < n; i++)
            for (long s = 0; s < k; s++)
            {
                long id = flat[i * k + s];
                if (id < 0 || id >= experts) throw new InvalidOperationException($"router chose expert {id} of {experts}");
                int e = (int)id;
                (tokens[e] ??= []).Add(i);
                (slots[e] ??= []).Add(s);
            }
        var result = new List<ExpertAssignment>();
        for (int e = 0; e < experts; e++)
            if (tokens[e] is { } t) result.Add(new ExpertAssignment(e, t.ToArray(), slots[e].ToArray()));
        return result;
    }
}

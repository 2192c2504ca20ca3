using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Modules;

/// <summary>HF MixtralModel: token embeddings, decoder layers, final norm.</summary>
public sealed class MixtralModel : nn.Module
{
    [ComponentName(Name = "embed_tokens")] private readonly Embedding _embedTokens;
    [ComponentName(Name = "layers")] private readonly ModuleList<MixtralDecoderLayer> _layers;
    [ComponentName(Name = "norm")] private readonly MixtralRMSNorm _norm;
    private readonly MixtralRotaryEmbedding _rotary;

    public MixtralModel(MixtralConfig c, ScalarType dtype, Device device, ExpertResidency? residency = null) : base(nameof(MixtralModel))
    {
        _embedTokens = new Embedding(c.VocabSize, c.HiddenSize, dtype, device);
        _layers = new ModuleList<MixtralDecoderLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++) _layers.Add(new MixtralDecoderLayer(c, i, dtype, device, residency));
        _norm = new MixtralRMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _rotary = new MixtralRotaryEmbedding(c.HeadDim, c.RopeTheta);
        RegisterComponents();
    }

    public IReadOnlyList<MixtralDecoderLayer> Layers => [.. _layers];
    public Embedding EmbedTokens => _embedTokens;

    /// <summary>Hidden states [B, T, D] after the final norm, for token ids [B, T] at positions start..start+T-1.</summary>
    public Tensor Forward(Tensor ids, long start, KvCache cache) => Forward(ids, start, cache, null, collectLanes: true)!;

    /// <summary>
    /// <see cref="Forward(Tensor, long, KvCache)"/> with two decode-pipeline options. <paramref name="abandon"/> is asked
    /// before each layer: true stops the forward there (the lanes of the layers already queued are collected) and returns
    /// null; the layers that ran wrote their keys at these positions, which the caller does not advance past. With
    /// <paramref name="collectLanes"/> false the last layer's CPU lane is left running (the device waits for it, not the
    /// host): the next forward's first layer or <see cref="CompleteExecutors"/> collects it and rethrows its failure.
    /// </summary>
    public Tensor? Forward(Tensor ids, long start, KvCache cache, Func<bool>? abandon, bool collectLanes)
    {
        using var scope = NewDisposeScope();
        Tensor h, cos, signedSin;
        using (StageTimer.Stage("embed+rope"))
        {
            h = _embedTokens.forward(ids);
            (cos, signedSin) = _rotary.Angles(start, ids.size(1), h.dtype, h.device);
        }
        try
        {
            foreach (var layer in _layers)
            {
                if (abandon?.Invoke() == true)
                {
                    CompleteExecutors();
                    return null;
                }
                h = layer.Forward(h, start, cos, signedSin, cache);
            }
            h = _norm.forward(h);
        }
        catch
        {
            // A lane still in flight must end here, or its failure would surface in the next request; the error in
            // flight is the one to report.
            try { CompleteExecutors(); } catch (Exception) { }
            throw;
        }
        if (collectLanes) CompleteExecutors(); // a gated layer's CPU lane: collected (and its failure thrown) before anyone reads h
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>Collects every CPU lane still running (a no-op when none) and rethrows the first failure.</summary>
    public void CompleteExecutors()
    {
        IExpertExecutor? last = null;
        foreach (var layer in _layers)
            if (layer.Moe.Executor is { } e && !ReferenceEquals(e, last)) (last = e).Complete();
    }
}

/// <summary>HF MixtralForCausalLM: the model plus the LM head. Logits come back in fp32.</summary>
public sealed class MixtralForCausalLM : nn.Module
{
    [ComponentName(Name = "model")] private readonly MixtralModel _model;
    [ComponentName(Name = "lm_head")] private readonly Linear _lmHead;

    /// <param name="residency">Which experts live on <paramref name="device"/>; the rest live in host memory and need an
    /// executor (<see cref="SetExpertExecutor"/>). Null: all experts on <paramref name="device"/>.</param>
    public MixtralForCausalLM(MixtralConfig config, ScalarType dtype, Device device, ExpertResidency? residency = null)
        : base(nameof(MixtralForCausalLM))
    {
        Config = config;
        DType = dtype;
        Device = device;
        _model = new MixtralModel(config, dtype, device, residency);
        _lmHead = new Linear(config.HiddenSize, config.VocabSize, dtype, device);
        RegisterComponents();
    }

    public MixtralConfig Config { get; }
    public ScalarType DType { get; }
    public Device Device { get; }
    public MixtralModel Model => _model;

    public void SetExpertExecutor(IExpertExecutor? executor)
    {
        foreach (var layer in _model.Layers) layer.Moe.Executor = executor;
    }

    public void SetRoutingObserver(Action<int, IReadOnlyList<ExpertAssignment>>? observer)
    {
        foreach (var layer in _model.Layers) layer.Moe.RoutingObserver = observer;
    }

    public KvCache NewCache(long capacity, long batch = 1) =>
        new(Config.NumHiddenLayers, batch, Config.NumKeyValueHeads, capacity, Config.HeadDim, DType, Device);

    /// <summary>The bytes <see cref="NewCache"/> allocates for <paramref name="capacity"/> tokens of <paramref name="batch"/> rows.</summary>
    public long KvCacheBytes(long capacity, long batch = 1) =>
        2L * Config.NumHiddenLayers * batch * Config.NumKeyValueHeads * capacity * Config.HeadDim * Cuda.ExpertShape.ElementSizeOf(DType);

    /// <summary>
    /// Runs ids [B, T] at positions cache.Length.., advances the cache, and returns fp32 logits:
    /// [B, T, V] when <paramref name="allPositions"/>, else [B, V] for the last position only.
    /// </summary>
    public Tensor Forward(Tensor ids, KvCache cache, bool allPositions = false) => Forward(ids, cache, allPositions, null)!;

    /// <summary>
    /// As <see cref="Forward(Tensor, KvCache, bool)"/>, but <paramref name="stop"/> is asked before each layer: when it
    /// says stop (a cancelled request in a long prefill), the lanes already started are collected, the cache does not
    /// advance, and the result is null.
    /// </summary>
    public Tensor? Forward(Tensor ids, KvCache cache, bool allPositions, Func<bool>? stop)
    {
        using var scope = NewDisposeScope();
        long start = cache.Length;
        if (start + ids.size(1) > cache.Capacity)
            throw new InvalidOperationException($"context overflow: {start} cached + {ids.size(1)} new tokens > capacity {cache.Capacity}");
        if (_model.Forward(ids.to(Device), start, cache, stop, collectLanes: true) is not { } h) return null;
        cache.Advance(ids.size(1));
        if (!allPositions) h = h.select(1, -1);
        using var head = StageTimer.Stage("lm_head");
        return _lmHead.forward(h).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One step queued for the device without the host waiting for it (see <see cref="Generation.DecodePipeline"/>): ids
    /// [B, T] (on the device already, e.g. the previous step's argmax), fp32 logits [B, V] of the last position, and the
    /// last layer's CPU lane left running (<see cref="CompleteLanes"/>). <paramref name="abandon"/> is asked before each
    /// layer; when it says stop, the step is dropped (the cache does not advance) and the result is null.
    /// </summary>
    public Tensor? ForwardQueued(Tensor ids, KvCache cache, Func<bool> abandon)
    {
        using var scope = NewDisposeScope();
        long start = cache.Length;
        if (start + ids.size(1) > cache.Capacity)
            throw new InvalidOperationException($"context overflow: {start} cached + {ids.size(1)} new tokens > capacity {cache.Capacity}");
        if (_model.Forward(ids.to(Device), start, cache, abandon, collectLanes: false) is not { } h) return null;
        cache.Advance(ids.size(1));
        using var head = StageTimer.Stage("lm_head");
        return _lmHead.forward(h.select(1, -1)).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Collects the CPU lanes a <see cref="ForwardQueued"/> left running; rethrows the first failure.</summary>
    public void CompleteLanes() => _model.CompleteExecutors();
}

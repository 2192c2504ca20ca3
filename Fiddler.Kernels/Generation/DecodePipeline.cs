using Fiddler.Kernels.Cache;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Generation;

// V=vocabulary

/// <summary>
/// Greedy decode with the host one step ahead of its own reading: each step's input is the previous step's argmax,
/// taken on the device, so the host queues step n+1 (embedding, first layer's attention and routing) before it has
/// read token n; token n's logits come down with a non-blocking copy and are handed out while step n+1 runs (between
/// its layers, once they have landed). Without it every token ends with the host waiting for the last layer's CPU
/// lane, then for the logits, and only then launching the next step's first layer while the device and the CPU pool
/// sit idle.
/// <para>
/// The consumer sees every step's logits in order, on the host, and may stop: a step already queued behind a stopping
/// token is dropped before its next layer (its lanes collected, the cache not advanced past it). The device's argmax and
/// the host's (first maximum on ties, as <c>torch.argmax</c>) agree on every finite input; NaN logits are the
/// consumer's to report.
/// </para>
/// </summary>
public sealed unsafe class DecodePipeline : IDisposable
{
    private readonly MixtralForCausalLM _model;
    private readonly KvCache _cache;
    private Tensor _input;           // [1, 1] int64 on the device: the next step's token
    private Tensor? _hostLogits;     // [V] fp32, page-locked on CUDA: the last queued step's logits
    private readonly CudaEvent? _landed;
    private bool _pending;           // _hostLogits holds (or will hold) a step's logits not yet handed out
    private readonly float[] _values; // what the consumer gets: reused (a fresh 128 KB array per token would land on the
                                      // large-object heap and bring full collections into the decode loop)

    /// <summary>
    /// Test seam: replaces "the previous logits have landed" (the CUDA event; always true without one), to play a device
    /// far behind the host on the CPU device: the step is then dropped between layers or after it was queued whole.
    /// </summary>
    internal Func<bool>? LandedProbe { get; init; }

    private bool Landed => LandedProbe?.Invoke() ?? _landed is null || _landed.IsComplete;

    /// <summary>A queued step's logits have not been handed out yet.</summary>
    public bool Pending => _pending;

    /// <param name="firstToken">The input of the first step (the token sampled from the prompt's logits).</param>
    public DecodePipeline(MixtralForCausalLM model, KvCache cache, long firstToken)
    {
        _model = model;
        _cache = cache;
        _values = new float[model.Config.VocabSize];
        using var scope = NewDisposeScope();
        _input = tensor(new[] { firstToken }, ScalarType.Int64).unsqueeze(0).to(model.Device).DetachFromDisposeScope();
        if (model.Device.type == DeviceType.CUDA && CudaRuntime.IsAvailable)
        {
            try
            {
                _hostLogits = empty(model.Config.VocabSize, ScalarType.Float32).pin_memory().DetachFromDisposeScope();
                _landed = CudaEvent.CreateBlocking(model.Device.index < 0 ? 0 : model.Device.index);
            }
            catch
            {
                _hostLogits?.Dispose();
                _input.Dispose();
                throw;
            }
        }
    }

    /// <summary>
    /// Queues the next step. Before that step's layers, once the previous step's logits are on the host, hands them to
    /// <paramref name="consume"/> (at the latest after queuing the step); <paramref name="consume"/> returns false to
    /// stop, and then the new step is dropped and this returns false. The array handed out is valid during the call
    /// only: the pipeline reuses it. <paramref name="consume"/> runs inside the model's forward (between two layers):
    /// tensors it makes are freed when the forward returns.
    /// </summary>
    public bool Advance(Func<float[], bool> consume)
    {
        using var scope = NewDisposeScope();
        bool beforeFirstLayer = true;
        bool Abandon()
        {
            bool first = beforeFirstLayer;
            beforeFirstLayer = false;
            if (!_pending || !Landed) return false;
            // Before the first layer the previous step's last CPU lane is still uncollected, and its logits are only right
            // if it succeeded (a failed lane's rows were merged all the same, so the device never waits forever). It has
            // ended, since its logits landed after it: collecting it costs no wait, and throws its failure before anyone
            // reads them. Later, the first layer has collected it. (Collected here, its layer's observation is reported
            // before the next layer's routing is read, so it carries no hand-off timing: telemetry only.)
            if (first) _model.CompleteLanes();
            return !Hand(consume);
        }
        Tensor? logits;
        try { logits = _model.ForwardQueued(_input, _cache, Abandon); }
        catch
        {
            // Whether here, at the first layer's collection or later, the pending logits may come from a failed lane:
            // never handed out after an error, not even by a Finish.
            _pending = false;
            throw;
        }
        if (logits is null) return false;
        if (_pending)
        {
            // The previous logits landed only after the whole step was queued (a device far behind the host): hand them
            // out now. On a stop, or when the consumer throws, the step is dropped: its lanes end before anything is
            // freed, and the cache goes back to before its position.
            bool go;
            try { go = Hand(consume); }
            catch
            {
                Drop();
                throw;
            }
            if (!go)
            {
                Drop();
                return false;
            }
        }
        var next = logits.argmax(-1).view(1, 1);
        next.DetachFromDisposeScope();
        _input.Dispose();
        _input = next;
        if (_landed is not null)
        {
            _hostLogits!.copy_(logits[0], true);
            _landed.RecordOnDefaultStream();
        }
        else
        {
            // Without CUDA events (the CPU device, or no CUDA runtime) the synchronous copy to the host is the wait: a
            // copy, so that the logits outlive this step's tensors.
            _hostLogits?.Dispose();
            _hostLogits = logits[0].to(ScalarType.Float32, CPU, copy: true);
            _hostLogits.DetachFromDisposeScope();
        }
        _pending = true;
        return true;
    }

    /// <summary>Collects the last step's CPU lanes (rethrowing a failure), then hands out its logits (if not yet: waits
    /// for them).</summary>
    public void Finish(Func<float[], bool>? consume)
    {
        try
        {
            // First the lanes: the last step's logits are only right if every one of its lanes succeeded.
            _model.CompleteLanes();
            if (_pending && consume is not null) Hand(consume);
        }
        finally { _pending = false; }
    }

    /// <summary>Drops a fully queued step: its lanes end, and the cache forgets its position.</summary>
    private void Drop()
    {
        try { _model.CompleteLanes(); }
        finally { _cache.Truncate(_cache.Length - 1); }
    }

    private bool Hand(Func<float[], bool> consume)
    {
        _pending = false;
        if (_landed is not null) Runtime.HostReadback.Wait(_landed);
        new ReadOnlySpan<float>((void*)Runtime.TensorMemory.DataPtr(_hostLogits!), _values.Length).CopyTo(_values);
        return consume(_values);
    }

    public void Dispose()
    {
        // A step may still be queued (a failure, or the caller stopped without Finish): let its lanes end first.
        try { _model.CompleteLanes(); } catch (Exception) { /* the step's failure was reported to the caller, or lost with it */ }
        if (_landed is not null)
        {
            try { _landed.Synchronize(); } catch (CudaException) { }
            _landed.Dispose();
        }
        _hostLogits?.Dispose();
        _input.Dispose();
    }
}

using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Engine;

/// <summary>
/// The engine's view of the <see cref="ExpertRouter"/>: translates Kernels' per-layer work into router loads and its
/// plan back into routes, and feeds observed lane times back for predicted-vs-observed accounting. Also counts the
/// GPU hit rate (resident experts over all chosen experts) for reporting.
/// </summary>
public sealed class RouterScheduler(ExpertRouter router) : IExpertScheduler
{
    private readonly Dictionary<int, LayerPlan> _lastPlan = new();
    private long _chosen, _resident, _cpu, _transfer, _split, _transferBytes;
    private double _cpuShares;
    private ExecutorTimings _timings;
    private long _timed, _deviceTimed, _handoffs;
    private DeviceLaneTimings _device;
    private HandoffTimings _handoff;
    private double _deviceLastHostMs, _cpuLastHostMs;
    private long _deviceLastLayers, _cpuLastLayers;
    private double _layerMsSum, _cpuLaneMsSum;

    public ExpertRouter Router { get; } = router;
    public double HitRate => _chosen == 0 ? 0 : (double)_resident / _chosen;
    public long CpuExperts => _cpu;
    public long TransferredExperts => _transfer;
    /// <summary>Experts divided between the CPU and a transfer (also counted in neither of the two above).</summary>
    public long SplitExperts => _split;
    /// <summary>CPU work in whole experts: CPU experts plus the CPU shares of split ones (for effective GB/s).</summary>
    public double CpuExpertEquivalents { get { lock (_lastPlan) return _cpuShares; } }

    /// <summary>Mean executor wall time and CPU lane time per layer since the last reset.</summary>
    public (double LayerMs, double CpuLaneMs, long Layers) MeanLayer
    {
        get { lock (_lastPlan) return _timed == 0 ? (0, 0, 0) : (_layerMsSum / _timed, _cpuLaneMsSum / _timed, _timed); }
    }

    /// <summary>Mean executor timeline per layer since the last reset (where a layer's host time went).</summary>
    public ExecutorTimings MeanTimings
    {
        get
        {
            lock (_lastPlan)
                return _timed == 0 ? default : new(_timings.DecideMs / _timed, _timings.CpuStartMs / _timed, _timings.DeviceQueueMs / _timed,
                    _timings.CpuWaitMs / _timed, _timings.MergeMs / _timed);
        }
    }
    public long TransferredBytes => _transferBytes;

    /// <summary>Mean device-side timings of gated layers (CUDA events) since the last reset, and how many layers had them.</summary>
    public (DeviceLaneTimings Mean, long Layers) MeanDevice
    {
        get
        {
            lock (_lastPlan)
                return _deviceTimed == 0 ? (default, 0) : (new(_device.DeviceLaneMs / _deviceTimed, _device.WaitedForCpuMs / _deviceTimed), _deviceTimed);
        }
    }

    /// <summary>Mean hand-off from a gated layer's CPU lane to the next layer's executor since the last reset, and how many.</summary>
    public (HandoffTimings Mean, long Layers) MeanHandoff
    {
        get
        {
            lock (_lastPlan)
                return _handoffs == 0 ? (default, 0)
                    : (new(_handoff.DeviceMs / _handoffs, _handoff.HostMs / _handoffs, _handoff.ToExecutorMs / _handoffs,
                        _handoff.ReadbackMs / _handoffs), _handoffs);
        }
    }

    /// <summary>A gated layer whose device waited less than this for the CPU lane had its device lane end last (the wait
    /// on a gate already raised costs a few µs).</summary>
    public const double DeviceLastBelowMs = 0.02;

    /// <summary>
    /// The hand-off's host part split by which lane of the layer ended last (see <see cref="DeviceLastBelowMs"/>): where
    /// the device lane did, the host's hand-off (timed from the CPU lane's end) also holds the device lane's tail.
    /// </summary>
    public ((double HostMs, long Layers) DeviceLast, (double HostMs, long Layers) CpuLast) HandoffByLastLane
    {
        get
        {
            lock (_lastPlan)
                return ((_deviceLastLayers == 0 ? 0 : _deviceLastHostMs / _deviceLastLayers, _deviceLastLayers),
                    (_cpuLastLayers == 0 ? 0 : _cpuLastHostMs / _cpuLastLayers, _cpuLastLayers));
        }
    }

    private HostReadScales? _readScales;

    /// <summary>
    /// Each host expert's read-speed scale (see <see cref="HostReadScales"/>), used when <see cref="UseReadScales"/>; null:
    /// every expert at the calibrated speed.
    /// </summary>
    public HostReadScales? ReadScales
    {
        get => Volatile.Read(ref _readScales);
        set => Volatile.Write(ref _readScales, value);
    }

    /// <summary>Whether plans use <see cref="ReadScales"/> (on by default; <c>bench --ab-read-scales</c> switches it between windows).</summary>
    public bool UseReadScales
    {
        get => Volatile.Read(ref _useReadScales);
        set => Volatile.Write(ref _useReadScales, value);
    }

    private bool _useReadScales = true;

    public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work)
    {
        var scales = UseReadScales ? ReadScales : null;
        var plan = Router.Decide(work.Select(w => new ExpertLoad(w.Expert, w.Tokens, w.Resident, w.Resident ? 1 : scales?.Of(layer, w.Expert) ?? 1)).ToArray());
        lock (_lastPlan) _lastPlan[layer] = plan;
        return plan.Decisions.Select(d => d.Placement switch
        {
            ExpertPlacement.Gpu => ExpertRoute.Gpu,
            ExpertPlacement.Cpu => ExpertRoute.Cpu,
            ExpertPlacement.Split => ExpertRoute.Split(d.CpuShare),
            _ => ExpertRoute.Transfer,
        }).ToArray();
    }

    public void Observe(LayerObservation o)
    {
        LayerPlan? plan = null;
        // A layer the executor routed itself (all resident) has no plan of this token: the last one stored is an older
        // token's, and accounting against it would teach the router from the wrong layer.
        if (o.Decided) lock (_lastPlan) _lastPlan.TryGetValue(o.Layer, out plan);
        if (plan is not null)
            Router.Account(plan, [], o.LayerMs, o.CpuLaneMs, o.Device?.DeviceLaneMs,
                cpuEndedLast: o.Device is { } lanes ? lanes.WaitedForCpuMs >= DeviceLastBelowMs : null);
        Interlocked.Add(ref _chosen, o.Work.Count);
        Interlocked.Add(ref _resident, o.Work.Count(w => w.Resident));
        Interlocked.Add(ref _cpu, o.Routes.Count(r => r == ExpertRoute.Cpu));
        Interlocked.Add(ref _transfer, o.Routes.Count(r => r == ExpertRoute.Transfer));
        Interlocked.Add(ref _split, o.Routes.Count(r => r.Kind == ExpertRouteKind.Split));
        lock (_lastPlan)
        {
            _cpuShares += o.Routes.Where(r => r.UsesCpu).Sum(r => r.CpuShare);
            if (o.Timings is { } t) { _timings += t; _timed++; _layerMsSum += o.LayerMs; _cpuLaneMsSum += o.CpuLaneMs; }
            if (o.Device is { } d) { _device += d; _deviceTimed++; }
            if (o.Handoff is { } h) { _handoff += h; _handoffs++; }
            if (o.Handoff is { } hl && o.Device is { } dl)
            {
                if (dl.WaitedForCpuMs < DeviceLastBelowMs) { _deviceLastHostMs += hl.HostMs; _deviceLastLayers++; }
                else { _cpuLastHostMs += hl.HostMs; _cpuLastLayers++; }
            }
        }
        Interlocked.Add(ref _transferBytes, o.TransferredBytes);
    }

    /// <summary>Starts a new measurement window (e.g. after warm-up).</summary>
    public void ResetCounters()
    {
        _chosen = _resident = _cpu = _transfer = _split = _transferBytes = 0;
        lock (_lastPlan) { _cpuShares = 0; _timings = default; _timed = _deviceTimed = _handoffs = 0; _device = default; _handoff = default; _layerMsSum = _cpuLaneMsSum = 0;
            _deviceLastHostMs = _cpuLastHostMs = 0; _deviceLastLayers = _cpuLastLayers = 0; }
        Router.ResetStats();
    }
}

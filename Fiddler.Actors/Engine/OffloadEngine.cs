using Fiddler.Actors.Placement;
using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Actors.Engine;

/// <summary>
/// A model placed under a GPU budget and wired for Fiddler execution: plan the placement (popularity order), build
/// the model with host experts in pinned memory, fill the weights, load or measure the latency models, and attach the
/// router-driven executor. Owns everything it builds.
/// </summary>
public sealed class OffloadEngine : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    private OffloadEngine(MixtralConfig config, MixtralForCausalLM model, HfTokenizer? tokenizer)
    {
        Config = config;
        Model = model;
        Tokenizer = tokenizer;
    }

    public MixtralConfig Config { get; }
    public MixtralForCausalLM Model { get; }
    public HfTokenizer? Tokenizer { get; }
    public PlacementPlan? Plan { get; private set; }
    public RouterScheduler? Scheduler { get; private set; }
    public HardwareProfile? Profile { get; private set; }
    public IWeightStager? Stager { get; private set; }
    public string? CpuBackend => Cpu?.Name;
    public ICpuExpertBackend? Cpu { get; private set; }

    /// <summary>Bytes in use on the GPU before the model was built (this process's CUDA context, other processes);
    /// null off CUDA.</summary>
    public long? DeviceBytesAtStart { get; private init; }

    public static OffloadEngine Create(EngineOptions o, Action<string> log)
    {
        if ((o.ModelDir is null) == (o.NamedConfig is null)) throw new ArgumentException("give a model directory or a named config, not both");
        if (o.NamedConfig is not null && !o.DummyWeights) throw new ArgumentException("a named config has no weights: add --dummy-weights");
        var config = o.ModelDir is not null ? MixtralConfig.Load(Path.Combine(o.ModelDir, "config.json")) : MixtralConfig.Named(o.NamedConfig!);
        if (o.Layers is int layers) config = config with { NumHiddenLayers = layers };
        config.Validate();
        var dtype = o.DType ?? (config.CheckpointDtype is { } d ? Kernels.Runtime.TorchRuntime.ParseDType(d) : ScalarType.BFloat16);
        var shape = ShapeOf(config, dtype);

        long? atStart = CudaRuntime.DeviceBytesInUse(o.Device);
        ExpertResidency? residency = null;
        PlacementPlan? plan = null;
        bool bySpeed = false;
        ExpertPopularity? popularity = null;
        if (o.GpuBudgetBytes is long budget)
        {
            popularity = Popularity(o, shape);
            plan = PlanPlacement(o, shape, config.MaxPositionEmbeddings, budget, popularity);
            residency = new ExpertResidency(plan.OnGpuByLayer(), pinHostMemory: o.Device.type == DeviceType.CUDA);
            log(plan.Summary());
            CheckFitsDevice(o.Device, plan.UsedBytes + plan.ReserveBytes, budgeted: true);
            bySpeed = o.PlaceByReadSpeed && plan.ExpertsOnGpu > 0 && plan.ExpertsOnGpu < plan.TotalExperts && CanHoldEveryExpert(shape, log);
            // Every expert is loaded into host memory first; PlaceByReadSpeed then moves the plan's number onto the GPU.
            if (bySpeed) residency = ExpertResidency.Where(shape.Layers, shape.Experts, (_, _) => false, residency.PinHostMemory);
        }
        else CheckFitsDevice(o.Device, DeviceMemoryFit.AllOnGpuBytes(shape, Math.Min(o.ContextTokens, config.MaxPositionEmbeddings), o.Sequences), budgeted: false);

        MixtralForCausalLM model;
        HfTokenizer? tokenizer = null;
        long fallbacksBefore = HostPinning.Fallbacks.Count;
        if (o.ModelDir is not null)
        {
            var loaded = ModelLoader.Load(o.ModelDir, new LoadOptions(o.Device, dtype, residency));
            (model, tokenizer) = (loaded.Model, loaded.Tokenizer);
        }
        else
        {
            model = new MixtralForCausalLM(config, dtype, o.Device, residency);
            DummyWeights.Fill(model);
        }
        if (HostPinning.Fallbacks is { Count: var fallbacks, LastReason: var reason } && fallbacks > fallbacksBefore)
            log($"warning: {fallbacks - fallbacksBefore} host weight tensors could not be page-locked where they are ({reason}); " +
                "they were copied into torch's pinned pool, which takes up to 2× their size and which the CPU expert kernel reads slower");
        var engine = new OffloadEngine(config, model, tokenizer) { Plan = plan, DeviceBytesAtStart = atStart };
        try
        {
            if (bySpeed)
            {
                engine.Plan = plan = engine.PlaceByReadSpeed(plan!, popularity!, o, log);
                residency = new ExpertResidency(plan.OnGpuByLayer(), residency!.PinHostMemory);
            }
            if (residency is not null && residency.ResidentCount < shape.Layers * shape.Experts)
            {
                engine.AttachExecutor(o, shape, dtype, log);
                // Only where the router chooses between the lanes (--routing cpu or transfer has nothing to choose).
                if (o.ExpertReadScales && o.Routing == RoutingMode.Auto) engine.ApplyReadScales(log);
            }
            return engine;
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The placement under <paramref name="budget"/>: room for the KV cache of <see cref="EngineOptions.Sequences"/>
    /// sequences of <see cref="EngineOptions.ContextTokens"/> positions (at most <paramref name="maxPositions"/>), the
    /// staging slots and one forward's activations; experts by popularity in the rest.
    /// </summary>
    /// <param name="popularity">The profile already loaded (null: <see cref="EngineOptions.PopularityPath"/>, or uniform).</param>
    public static PlacementPlan PlanPlacement(EngineOptions o, ModelShape shape, int maxPositions, long budget, ExpertPopularity? popularity = null)
    {
        if (o.Sequences is < 1 or > 32) throw new ArgumentException($"sequences (beam width) must be in 1..32, got {o.Sequences}");
        popularity ??= Popularity(o, shape);
        long context = Math.Min(o.ContextTokens, maxPositions);
        return PlacementPlanner.Plan(shape, budget, popularity, shape.KvCacheBytes(context, o.Sequences),
            reserveBytes: shape.ActivationReserveBytes(context, o.Sequences), stagingBytes: o.StagingSlots * shape.ExpertBytes);
    }

    private static ExpertPopularity Popularity(EngineOptions o, ModelShape shape) => o.PopularityPath is null
        ? ExpertPopularity.Uniform(shape.Layers, shape.Experts) : ExpertPopularity.Load(o.PopularityPath, shape);

    /// <summary>Whether host memory can hold every expert at once (what <see cref="EngineOptions.PlaceByReadSpeed"/>
    /// loads before it chooses), with 4 GiB to spare; says so in the log when not.</summary>
    private static bool CanHoldEveryExpert(ModelShape shape, Action<string> log)
    {
        long need = shape.AllExpertsBytes + (4L << 30);
        if (Kernels.Runtime.HostMemory.AvailableBytes() is not long free || free >= need) return true;
        log($"placement by read speed skipped: every expert in host memory needs {MemoryBudget.Format1(need)}, " +
            $"{MemoryBudget.Format1(free)} is free; experts placed by popularity");
        return false;
    }

    /// <summary>
    /// With every expert in host memory: reads each (twice, the worker pool's plain read), chooses the GPU's experts by
    /// the CPU time they save (<see cref="PlacementPlanner.ByReadSpeed"/>) and moves them there. Before the executor is
    /// attached, which keeps host experts' memory.
    /// </summary>
    private PlacementPlan PlaceByReadSpeed(PlacementPlan plan, ExpertPopularity popularity, EngineOptions o, Action<string> log)
    {
        var host = HostExperts();
        HostExpertReads.Result? reads;
        using (var pool = new CpuWorkerPool(DefaultCpuThreads(o), TimeSpan.FromMilliseconds(2)))
            reads = HostExpertReads.Measure(pool, host.Select(h => h.Memory).ToArray(), passes: 2);
        if (reads is not { Experts: > 0 })
        {
            MoveToGpu(plan, o.Device);
            log("placement by read speed: experts too small to time; placed by popularity");
            return plan;
        }
        double[] best = reads.Best; // each expert's best pass (computed per call: read it once)
        var rates = new double?[Config.NumHiddenLayers, Config.NumLocalExperts];
        for (int i = 0; i < host.Length; i++) rates[host[i].Layer, host[i].Expert] = best[i];
        var chosen = PlacementPlanner.ByReadSpeed(plan, popularity, rates);
        MoveToGpu(chosen, o.Device);
        double Median(IEnumerable<double> xs) { var a = xs.Order().ToArray(); return a.Length == 0 ? double.NaN : a[a.Length / 2]; }
        var all = host.Select((h, i) => (h.Layer, h.Expert, Rate: best[i])).ToArray();
        double median = reads.Quantile(0.5);
        int slow = all.Count(x => x.Rate < PlacementPlanner.SlowReadShare * median);
        log($"placement by read speed: {slow} of {all.Length} experts read below {PlacementPlanner.SlowReadShare:P0} of the median; {chosen.ExpertsOnGpu} experts on the GPU read at median {Median(all.Where(x => chosen.IsOnGpu(x.Layer, x.Expert)).Select(x => x.Rate)):F1} GB/s " +
            $"from host memory, the {all.Length - chosen.ExpertsOnGpu} left there at {Median(all.Where(x => !chosen.IsOnGpu(x.Layer, x.Expert)).Select(x => x.Rate)):F1} " +
            $"(all: p10 {reads.Quantile(0.1):F1}, median {median:F1}; pass correlation {reads.PassCorrelation:F2}); expected hit rate {chosen.ExpectedHitRate:P1}");
        return chosen;
    }

    /// <summary>Moves the experts <paramref name="plan"/> puts on the GPU there (every expert starts in host memory).</summary>
    private void MoveToGpu(PlacementPlan plan, Device device)
    {
        foreach (var layer in Model.Model.Layers)
            for (int e = 0; e < Config.NumLocalExperts; e++)
                if (plan.IsOnGpu(layer.Moe.Layer, e)) layer.Moe.MakeResident(e, device);
    }

    /// <summary>
    /// Throws <see cref="PlacementException"/> when <paramref name="plannedBytes"/> cannot fit the free memory of
    /// <paramref name="device"/> (CUDA only; see <see cref="DeviceMemoryFit"/>). Called before anything is allocated.
    /// </summary>
    public static void CheckFitsDevice(Device device, long plannedBytes, bool budgeted)
    {
        if (device.type != DeviceType.CUDA || !CudaRuntime.IsAvailable) return;
        using var on = CudaRuntime.UseDevice(device.index < 0 ? 0 : device.index);
        var (free, total) = CudaRuntime.MemGetInfo();
        DeviceMemoryFit.Check(plannedBytes, free, total, CudaRuntime.DeviceLabel(device), budgeted);
    }

    /// <summary>
    /// Checks, before loading, that the whole checkpoint in <paramref name="modelDir"/> fits <paramref name="device"/>
    /// with the KV caches and activations of <paramref name="sequences"/> sequences of <paramref name="contextTokens"/>
    /// positions (the paths that load without a budget; 0 positions: the weights and libtorch's runtime reserve).
    /// </summary>
    public static void CheckWholeModelFits(string modelDir, Device device, ScalarType? dtype, long contextTokens, int sequences = 1)
    {
        if (device.type != DeviceType.CUDA || !CudaRuntime.IsAvailable) return;
        var config = MixtralConfig.Load(Path.Combine(modelDir, "config.json"));
        var dt = dtype ?? (config.CheckpointDtype is { } d ? Kernels.Runtime.TorchRuntime.ParseDType(d) : ScalarType.BFloat16);
        var shape = ShapeOf(config, dt);
        CheckFitsDevice(device, DeviceMemoryFit.AllOnGpuBytes(shape, Math.Min(contextTokens, config.MaxPositionEmbeddings), sequences), budgeted: false);
    }

    /// <summary>The sizes placement works with, for <paramref name="config"/>'s model held in <paramref name="dtype"/>.</summary>
    public static ModelShape ShapeOf(MixtralConfig config, ScalarType dtype) => ModelShape.From(config, dtype == ScalarType.Float32 ? 4 : 2);

    /// <summary>
    /// For a model loaded whole onto a CUDA device: the most positions whose KV cache and prompt activations fit the
    /// memory still free (<see cref="DeviceMemoryFit.ContextThatFits"/>); null off CUDA.
    /// </summary>
    public static int? ContextThatFitsFreeMemory(MixtralConfig config, ScalarType dtype, Device device)
    {
        if (device.type != DeviceType.CUDA || !CudaRuntime.IsAvailable) return null;
        using var on = CudaRuntime.UseDevice(device.index < 0 ? 0 : device.index);
        var (free, _) = CudaRuntime.MemGetInfo();
        return DeviceMemoryFit.ContextThatFits(ShapeOf(config, dtype), free, config.MaxPositionEmbeddings);
    }

    private void AttachExecutor(EngineOptions o, ModelShape shape, ScalarType dtype, Action<string> log)
    {
        // One core stays free for the thread that drives the GPU: a straggling worker stalls the whole parallel region.
        // Workers spin 2 ms before sleeping: one decode layer's device work is ~1 ms, so the pool stays awake between layers.
        // The actor runtime takes no more: its router and CPU-pool actors share one thread, the pool's caller.
        var pool = Own(new CpuWorkerPool(DefaultCpuThreads(o), TimeSpan.FromMilliseconds(2)));
        // CPU lanes start on a thread of their own that spins between layers like the workers (the thread pool's idle
        // threads sleep: each layer's lane began with a wake-up); it joins the pool's region as its caller.
        var lane = o.DedicatedLaneThread ? Own(new SpinningThread(TimeSpan.FromMilliseconds(2))) : null;
        var simd = new SimdCpuBackend(pool, lane);
        // libtorch's CPU linear (large batches) gets the same cores as the pool, for the same reason: its OpenMP team
        // defaults to every core, and the thread queuing the GPU's copies and experts takes one of them.
        var torchCpu = new TorchCpuBackend(o.Device.type == DeviceType.CUDA ? pool.Concurrency : 0);
        var expertShape = new ExpertShape(Config.HiddenSize, Config.IntermediateSize, dtype);
        _pool = pool;
        _cudaStager = o.Device.type == DeviceType.CUDA ? new WeightStager(o.Device, expertShape, o.StagingSlots) : null;
        Stager = _cudaStager is not null
            ? Own(new CudaWeightStager(_cudaStager))
            : Own(new CopyStager(o.StagingSlots, Config.HiddenSize, Config.IntermediateSize, dtype, o.Device));
        var key = HardwareKey.ForThisHost(CudaRuntime.DeviceLabel(o.Device), shape, dtype.ToString(), pool.Concurrency,
            Fiddler.Kernels.Experts.CpuKernelSettings.ProfileKey);
        Profile = HardwareProfile.LoadIfMatches(o.ProfilePath, key, out string? mismatch);
        if (Profile is null)
        {
            log($"calibrating latency models for {key.CpuModel} / {key.GpuName} / {key.CpuThreads} CPU workers (cached in {o.ProfilePath}" +
                (mismatch is null ? ")" : $"; the cached one is for another {mismatch})"));
            var points = Calibration.Measure(Config, dtype, o.Device, simd, torchCpu, Stager, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
            Profile = HardwareProfiles.FromCalibration(key, points);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(o.ProfilePath))!);
            Profile.Save(o.ProfilePath);
        }
        var profile = Profile;
        var cpu = new SplitCpuBackend(simd, torchCpu, profile.CpuPrefersTorch, lane);
        Cpu = cpu;
        Scheduler = new RouterScheduler(new ExpertRouter(profile, new RouterOptions(o.Routing, o.StagingSlots,
            SplitExperts: o.SplitExperts, CpuContention: o.CpuContention, AdaptCpuModel: o.AdaptCpuModel, BalanceLastLane: o.BalanceLastLane, BatchAdaptRate: o.BatchAdaptRate)));
        Executor = Own(new OffloadExecutor(Scheduler, cpu, Stager, o.Merge, prefetchRows: o.PrefetchRows, spinKernelGate: o.SpinKernelGate));
        Model.SetExpertExecutor(Executor);
    }

    /// <summary>The CPU expert workers <paramref name="o"/> asks for (see <see cref="EngineOptions.CpuThreads"/>).</summary>
    public static int DefaultCpuThreads(EngineOptions o) =>
        o.CpuThreads > 0 ? o.CpuThreads : Math.Max(1, Environment.ProcessorCount - 1);

    private CpuWorkerPool? _pool;
    private WeightStager? _cudaStager;

    /// <summary>The CPU expert workers (null when every expert is resident); <c>bench --ab-cpu-threads</c> narrows it at run time.</summary>
    public CpuWorkerPool? CpuPool => _pool;

    /// <summary>
    /// This host's ceiling for the decode lanes (<see cref="LaneCeiling"/>), measured on the engine's worker pool and
    /// stager over its own CPU-resident experts: six to copy, six others to read (~2 GB each at full size). Null off CUDA
    /// or with fewer than twelve CPU-resident experts. Run it between requests: it uses the staging slots.
    /// </summary>
    public LaneCeiling.Result? MeasureLaneCeiling()
    {
        if (_pool is null || _cudaStager is null) return null;
        var host = Model.Model.Layers.SelectMany(l => Enumerable.Range(0, Config.NumLocalExperts)
                .Where(e => !l.Moe.IsResident(e)).Select(e => l.Moe.Expert(e)))
            .Select(x => HostExpert.FromTensors(x.Gate.Weight, x.Up.Weight, x.Down.Weight)).Take(12).ToArray();
        return host.Length < 12 ? null : LaneCeiling.Measure(_pool, _cudaStager, host[..6], host[6..]);
    }

    /// <summary>
    /// Every host-resident expert read alone by the CPU pool, <paramref name="passes"/> times, layer by layer (see
    /// <see cref="HostExpertReads"/>); null without a pool or host experts big enough to time.
    /// </summary>
    public HostExpertReads.Result? MeasureHostExpertReads(int passes = 2) =>
        _pool is null ? null : HostExpertReads.Measure(_pool, HostExperts().Select(h => h.Memory).ToArray(), passes);

    /// <summary>
    /// Every host expert read twice (<see cref="MeasureHostExpertReads"/>), each at its better pass, as the router's
    /// <see cref="HostReadScales"/>; null without a pool or experts big enough to time.
    /// </summary>
    public HostReadScales? MeasureReadScales()
    {
        if (_pool is null) return null;
        var host = HostExperts();
        if (HostExpertReads.Measure(_pool, host.Select(h => h.Memory).ToArray(), passes: 2) is not { Experts: > 0 } reads) return null;
        double[] best = reads.Best;
        return new HostReadScales(Config.NumHiddenLayers, Config.NumLocalExperts,
            host.Select((h, i) => (h.Layer, h.Expert, best[i])).ToArray());
    }

    /// <summary>
    /// Measures the host experts' read speeds and, where the host's memory is uneven, has the router plan by them. A
    /// failed measurement is logged and leaves the router on calibrated times: the engine works without it.
    /// </summary>
    private void ApplyReadScales(Action<string> log)
    {
        HostReadScales? scales;
        try { scales = MeasureReadScales(); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or CudaException)
        {
            log($"host expert reads: not measured ({e.Message}); the router keeps the calibrated time for every expert");
            return;
        }
        if (scales is null) return;
        ReadScales = scales;
        if (scales.Uneven) Scheduler!.ReadScales = scales;
        log($"host expert reads: {scales} (GB/s); " + (scales.Uneven
            ? "the router plans each expert's CPU time by its read speed"
            : "the router keeps the calibrated time for every expert"));
    }

    /// <summary>The host-resident experts, layer by layer, with their weights' memory (read-only use: not required pinned).</summary>
    private (int Layer, int Expert, HostExpert Memory)[] HostExperts() =>
        Model.Model.Layers.SelectMany(l => Enumerable.Range(0, Config.NumLocalExperts).Where(e => !l.Moe.IsResident(e))
                .Select(e => (l.Moe.Layer, e, l.Moe.Expert(e))))
            .Select(x => (x.Item1, x.e, HostExpert.FromTensors(x.Item3.Gate.Weight, x.Item3.Up.Weight, x.Item3.Down.Weight, requirePinned: false)))
            .ToArray();

    /// <summary>The host experts' read speeds measured at start (null: not measured); the router plans by them where
    /// they are <see cref="HostReadScales.Uneven"/> (<see cref="RouterScheduler.ReadScales"/>).</summary>
    public HostReadScales? ReadScales { get; private set; }

    /// <summary>The direct (actor-free) executor the model runs with; set it again after an actor runtime replaced it.</summary>
    public OffloadExecutor? Executor { get; private set; }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    /// <summary>
    /// The executor, stager and CPU pool go first (they drain what they queued: a lane's reads of host experts, the
    /// copies out of them), then the host experts are unregistered and the model freed. Each step runs even if an
    /// earlier one throws (a CUDA error after a device fault, say); the first error is rethrown at the end.
    /// </summary>
    public void Dispose()
    {
        var errors = new List<Exception>();
        void Step(Action a)
        {
            try { a(); }
            catch (Exception e) { errors.Add(e); }
        }
        Step(() => Model.SetExpertExecutor(null));
        foreach (var d in Enumerable.Reverse(_owned)) Step(d.Dispose);
        Step(() => HostPinning.Release(Model));
        Step(Model.Dispose);
        if (Tokenizer is { } t) Step(t.Dispose);
        if (errors.Count == 1) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(errors[0]);
        if (errors.Count > 1) throw new AggregateException("disposing the engine", errors);
    }
}

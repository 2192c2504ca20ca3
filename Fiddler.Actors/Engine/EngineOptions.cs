using Fiddler.Actors.Scheduling;
using static TorchSharp.torch;

namespace Fiddler.Actors.Engine;

/// <summary>
/// How to build an engine. Exactly one of <see cref="ModelDir"/> (a Hugging Face checkpoint) or
/// <see cref="NamedConfig"/> with <see cref="DummyWeights"/> (full-size shapes with random weights, for benchmarks).
/// <see cref="GpuBudgetBytes"/> null: every expert on <see cref="Device"/>.
/// </summary>
public sealed record EngineOptions
{
    public string? ModelDir { get; init; }
    public string? NamedConfig { get; init; }
    public bool DummyWeights { get; init; }
    public required Device Device { get; init; }
    public ScalarType? DType { get; init; }
    public long? GpuBudgetBytes { get; init; }
    public string? PopularityPath { get; init; }
    /// <summary>Tokens of KV cache the budget must leave room for (per sequence).</summary>
    public int ContextTokens { get; init; } = 4096;
    /// <summary>Sequences decoded together (the beam width): the KV cache and the prompt's activations the budget leaves
    /// room for are this many times one sequence's. 1..32.</summary>
    public int Sequences { get; init; } = 1;
    public int StagingSlots { get; init; } = 2;
    public RoutingMode Routing { get; init; } = RoutingMode.Auto;
    /// <summary>Let the router divide one expert per layer between the CPU and a transfer (see <see cref="RouterOptions"/>).</summary>
    public bool SplitExperts { get; init; } = true;
    /// <summary>CPU expert slowdown while weights stream in the same layer (see <see cref="RouterOptions.CpuContention"/>).</summary>
    public double CpuContention { get; init; } = RouterOptions.Default.CpuContention;
    /// <summary>Learn the CPU lane's slowdown online (see <see cref="RouterOptions.AdaptCpuModel"/>).</summary>
    public bool AdaptCpuModel { get; init; } = true;
    /// <summary>How fast batch layers (prefill, beams) learn their factors (see <see cref="RouterOptions.BatchAdaptRate"/>).</summary>
    public double BatchAdaptRate { get; init; } = RouterOptions.Default.BatchAdaptRate;
    /// <summary>How CPU results reach the GPU (see <see cref="Fiddler.Kernels.Offload.CpuMerge"/>): by default the GPU waits for them, not the host.</summary>
    public Fiddler.Kernels.Offload.CpuMerge Merge { get; init; } = Fiddler.Kernels.Offload.CpuMerge.Gated;
    /// <summary>Latency-model cache file; calibrated and written when missing or for another host/model.</summary>
    public string ProfilePath { get; init; } = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "fiddler", "profile.json");
    /// <summary>CPU expert pool participants (the caller included); 0: logical CPUs − 1, one core left for the thread that
    /// drives the GPU. The same through the actor runtime: its router and CPU-pool actors share one thread, the pool's
    /// caller (akka.hocon's lane-dispatcher).</summary>
    public int CpuThreads { get; init; }
    /// <summary>Bring a decode layer's rows to the host with its routing (one read-back; see
    /// <see cref="Fiddler.Kernels.Offload.OffloadExecutor"/>). False: after it, as before (for comparison).</summary>
    public bool PrefetchRows { get; init; } = true;
    /// <summary>Start CPU lanes on a dedicated spinning thread (<see cref="Fiddler.Kernels.Runtime.SpinningThread"/>).
    /// False: on the .NET thread pool, as before (for comparison).</summary>
    public bool DedicatedLaneThread { get; init; } = true;
    /// <summary>On CUDA, the device waits for a CPU lane in a spin kernel (see <see cref="Fiddler.Kernels.Cuda.HostSignal"/>)
    /// instead of the driver's stream wait. Off by default: 3-7 µs faster per wait in cuda-selftest, no difference shown
    /// in decode on the H100 host (2026-11-27).</summary>
    public bool SpinKernelGate { get; init; }
    /// <summary>Balance decode layers' lanes by which one ended last, not only by their mean times (see
    /// <see cref="RouterOptions.BalanceLastLane"/>). On by default: over 11 alternating pairs at 24 GiB on six H100
    /// hosts it won 6, median +0.9 % decode (within the hosts' noise), and cut the hand-off between layers by a third
    /// (2026-11-27, BENCHMARKS.md session 8); false for comparison.</summary>
    public bool BalanceLastLane { get; init; } = true;

    /// <summary>
    /// At start, read every host expert's weights (twice, ~2 s for Mixtral at 24 GiB) and route by how fast this host's
    /// memory serves each (see <see cref="Scheduling.HostReadScales"/>). On by default.
    /// </summary>
    public bool ExpertReadScales { get; init; } = true;

    /// <summary>
    /// Under a budget: load every expert into host memory first, read each, and put on the GPU the experts whose host
    /// reads would cost the CPU lane most (choice rate ÷ read speed; <see cref="Placement.PlacementPlanner.ByReadSpeed"/>),
    /// as many as the popularity plan holds; experts reading within 10 % of the median count as equal, so on a host whose
    /// memory reads evenly the plan is the popularity plan. Needs host memory for all experts at once (else the popularity
    /// plan). On by default: on an H200 host whose memory read unevenly (2026-11-28, alternating runs in one call) it gave
    /// +2.5 % and +3.4 % decode at 24 GiB and +7.7 % at 78 GiB; false places by popularity alone (for comparison).
    /// </summary>
    public bool PlaceByReadSpeed { get; init; } = true;
    public int? Layers { get; init; }
}

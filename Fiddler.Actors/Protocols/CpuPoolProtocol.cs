using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Protocols;

/// <summary>Runs one layer's CPU experts on the worker pool (one parallel region).</summary>
public sealed record RunCpuExperts(IReadOnlyList<CpuExpertJob> Jobs);

/// <summary>The CPU experts are done; wall time of the parallel region.</summary>
public sealed record CpuExpertsDone(double Ms);

/// <summary>The CPU experts failed; the caller rethrows.</summary>
public sealed record CpuExpertsFailed(Exception Error);

using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Protocols;

/// <summary>
/// Runs one layer's CPU experts on the worker pool (one parallel region). <paramref name="Finished"/> (in-process only)
/// is called the moment they are done or failed, before the reply: it releases the GPU's wait for them. With
/// <paramref name="Reply"/> (in-process only) the reply completes it on the pool's thread instead of going to the
/// sender: whoever waits on it wakes straight from there, not after a thread-pool hop. A caller that gave up waiting
/// cancels <paramref name="Abandoned"/>: if the pool has not started the jobs by then, it skips them (their inputs are
/// stale) and answers <see cref="CpuExpertsFailed"/>, still calling <paramref name="Finished"/>.
/// </summary>
public sealed record RunCpuExperts(IReadOnlyList<CpuExpertJob> Jobs, Action? Finished = null, TaskCompletionSource<object>? Reply = null,
    CancellationToken Abandoned = default);

/// <summary>The CPU experts are done; wall time of the parallel region.</summary>
public sealed record CpuExpertsDone(double Ms);

/// <summary>The CPU experts failed; the caller rethrows.</summary>
public sealed record CpuExpertsFailed(Exception Error);

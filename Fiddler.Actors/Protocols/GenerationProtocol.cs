using System.Threading.Channels;
using Fiddler.Kernels.Generation;

namespace Fiddler.Actors.Protocols;

/// <summary>A generation request: tokens are written to <paramref name="Tokens"/> as they come; the channel is completed
/// (with the error, if any) when the generation ends. <paramref name="Cancel"/> stops it within one decode step.
/// <paramref name="CountInStats"/> false leaves its layers out of the layer actors' statistics (a server's health probe:
/// /metrics counts what clients asked for); the router still learns from them.
/// <paramref name="Ticket"/>, when set, lets the caller withdraw the request while it is still queued.</summary>
public sealed record Generate(int[] Prompt, GenerationOptions Options, ChannelWriter<GeneratedToken> Tokens, CancellationToken Cancel,
    bool CountInStats = true, GenerationTicket? Ticket = null);

/// <summary>
/// Who ends a queued generation first: the device actor starting it (<see cref="TryStart"/>) or its caller withdrawing
/// it (<see cref="TryWithdraw"/>, on cancel), so a cancelled request waiting behind a long one ends at once, as a
/// cancelled generation does (no tokens, finish reason cancelled), and a withdrawn one never runs.
/// </summary>
public sealed class GenerationTicket
{
    private const int Queued = 0, Started = 1, Withdrawn = 2;
    private int _state;

    /// <summary>True when the generation may run (it was not withdrawn first).</summary>
    public bool TryStart() => Interlocked.CompareExchange(ref _state, Started, Queued) == Queued;

    /// <summary>True when the generation will never run (it had not started).</summary>
    public bool TryWithdraw() => Interlocked.CompareExchange(ref _state, Withdrawn, Queued) == Queued;

    /// <summary>Whether the caller withdrew it: it never ran and never will.</summary>
    public bool IsWithdrawn => Volatile.Read(ref _state) == Withdrawn;
}

/// <summary>Reply to <see cref="Generate"/> when the generation has ended normally.</summary>
public sealed record GenerationCompleted(GenerationResult Result);

/// <summary>Reply to <see cref="Generate"/> when the request was invalid or the engine failed.</summary>
public sealed record GenerationFailed(Exception Error);

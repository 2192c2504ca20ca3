using System.Threading.Channels;
using Fiddler.Kernels.Generation;

namespace Fiddler.Actors.Protocols;

/// <summary>A generation request: tokens are written to <paramref name="Tokens"/> as they come; the channel is completed
/// (with the error, if any) when the generation ends. <paramref name="Cancel"/> stops it within one decode step.
/// <paramref name="CountInStats"/> false leaves its layers out of the layer actors' statistics (a server's health probe:
/// /metrics counts what clients asked for); the router still learns from them.</summary>
public sealed record Generate(int[] Prompt, GenerationOptions Options, ChannelWriter<GeneratedToken> Tokens, CancellationToken Cancel,
    bool CountInStats = true);

/// <summary>Reply to <see cref="Generate"/> when the generation has ended normally.</summary>
public sealed record GenerationCompleted(GenerationResult Result);

/// <summary>Reply to <see cref="Generate"/> when the request was invalid or the engine failed.</summary>
public sealed record GenerationFailed(Exception Error);

namespace Fiddler.Host.Serving.OpenAi;

public enum OpenAiEndpoint { Chat, Completion }

/// <summary>
/// A chat or completions request, parsed and range-checked (<see cref="OpenAiRequestParser"/>) but not yet
/// tokenized. Exactly one of <see cref="Messages"/>, <see cref="PromptText"/>, <see cref="PromptIds"/> is set.
/// </summary>
public sealed record OpenAiRequest
{
    public required OpenAiEndpoint Endpoint { get; init; }
    public required string Model { get; init; }
    public IReadOnlyList<ChatMessage>? Messages { get; init; }
    public string? PromptText { get; init; }
    public int[]? PromptIds { get; init; }
    /// <summary>max_tokens / max_completion_tokens; null: the endpoint's default.</summary>
    public int? MaxTokens { get; init; }
    /// <summary>OpenAI's default is 1 (sampling); 0 is greedy.</summary>
    public float Temperature { get; init; } = 1;
    public float TopP { get; init; } = 1;
    /// <summary>An extension (vLLM's name); 0 disables.</summary>
    public int TopK { get; init; }
    public IReadOnlyList<string> Stop { get; init; } = [];
    /// <summary>An extension (vLLM's name): keep generating past the end-of-sequence token.</summary>
    public bool IgnoreEos { get; init; }
    public long? Seed { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    /// <summary>Chat: <c>logprobs: true</c>. Completions: <c>logprobs</c> given (even 0).</summary>
    public bool Logprobs { get; init; }
    /// <summary>Alternatives per position: chat <c>top_logprobs</c>, completions <c>logprobs</c>.</summary>
    public int TopLogprobs { get; init; }
}

using Fiddler.Kernels.Generation;

namespace Fiddler.Host.Serving;

/// <summary>
/// The one path from a frontend (OpenAI HTTP, gRPC) into the engine. Frontends parse and validate their own wire
/// format, turn it into a <see cref="CompletionJob"/>, ask for a place in the queue with <see cref="Admit"/> (which
/// answers at once) and stream the job's <see cref="CompletionEvent"/>s. The implementation runs jobs through the
/// in-process actor API (<c>FiddlerRuntime</c>), one at a time.
/// </summary>
public interface IInferenceService
{
    /// <summary>The served model (id, context length, vocabulary size, chat template name).</summary>
    ServedModel Model { get; }

    /// <summary>Ready only after a real one-token generation has worked (and while none has failed since).</summary>
    HealthReport Health { get; }

    /// <summary>Jobs admitted and not finished (running + waiting).</summary>
    int QueueDepth { get; }

    /// <summary>Text → token ids (with the model's BOS when <paramref name="addSpecialTokens"/>). Throws <see cref="RequestException"/> when the model has no tokenizer.</summary>
    int[] Tokenize(string text, bool addSpecialTokens = true);

    /// <summary>Chat messages → prompt text via the model's chat template. Throws <see cref="RequestException"/> for a conversation the template rejects.</summary>
    string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages);

    /// <summary>
    /// Display text of one token id, for log-probabilities (e.g. " Hello" for the piece "▁Hello"); empty when unknown.
    /// A default body so that decorators written before it still compile: they should forward it.
    /// </summary>
    string TokenText(int id) => "";

    /// <summary>
    /// Takes a place in the bounded queue, at once: throws <see cref="QueueFullException"/> when it is full and
    /// <see cref="ServiceStoppingException"/> once shutdown began. Dispose the ticket if the job never runs.
    /// </summary>
    QueueTicket Admit();

    /// <summary>
    /// Waits for the ticket's turn, then generates. Throws <see cref="RequestException"/> for a job the model cannot take
    /// (before anything is streamed). Cancelling <paramref name="cancel"/> (client gone, deadline) stops the generation
    /// within one decode step and frees its KV cache; the stream then ends with <see cref="FinishReason.Cancelled"/>.
    /// </summary>
    IAsyncEnumerable<CompletionEvent> RunAsync(QueueTicket ticket, CompletionJob job, CancellationToken cancel);
}

/// <summary>A validated request in engine terms.</summary>
public sealed record CompletionJob(int[] PromptIds, GenerationOptions Options, string RequestId);

public abstract record CompletionEvent;

/// <summary>One generated token; <see cref="Text"/> is the newly printable text (may be empty).</summary>
public sealed record TokenEvent(GeneratedToken Token) : CompletionEvent;

/// <summary>The last event of a job.</summary>
public sealed record CompletedEvent(FinishReason Finish, int PromptTokens, int CompletionTokens, string Text,
    TimeSpan Queued, TimeSpan Prefill, TimeSpan Decode) : CompletionEvent;

public sealed record ChatMessage(string Role, string Content);

public sealed record ServedModel(string Id, int ContextLength, int VocabSize, string? ChatTemplate, DateTimeOffset Created);

public sealed record HealthReport(bool Ready, string Status, string? Detail);

/// <summary>A place in the queue; disposing it gives the place back.</summary>
public abstract class QueueTicket : IDisposable
{
    public abstract void Dispose();
}

/// <summary>A client error: HTTP 400 (404 for <see cref="RequestErrorKind.NotFound"/>), gRPC INVALID_ARGUMENT / NOT_FOUND.</summary>
public sealed class RequestException(string message, string? param = null, RequestErrorKind kind = RequestErrorKind.Invalid,
    string? code = null) : Exception(message)
{
    public string? Param { get; } = param;
    public RequestErrorKind Kind { get; } = kind;
    /// <summary>OpenAI's error code, e.g. "context_length_exceeded".</summary>
    public string? Code { get; } = code;
}

public enum RequestErrorKind { Invalid, NotFound, ContextLength }

/// <summary>The queue is full: HTTP 429, gRPC RESOURCE_EXHAUSTED.</summary>
public sealed class QueueFullException(int capacity) : Exception($"the request queue is full ({capacity} requests): retry later")
{
    public int Capacity { get; } = capacity;
}

/// <summary>Shutdown began: HTTP 503, gRPC UNAVAILABLE.</summary>
public sealed class ServiceStoppingException() : Exception("the server is shutting down");

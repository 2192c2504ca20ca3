using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Fiddler.Host.Serving;
using Fiddler.Kernels.Generation;

namespace Fiddler.Tests.Serving;

/// <summary>
/// A fake engine for frontend and telemetry tests: deterministic tokens (id = prompt sum + step, mod vocab; text
/// "&lt;id&gt;"), configurable delays, a bounded queue, and a record of every job and every cancellation it saw.
/// </summary>
internal sealed class ScriptedInferenceService : IInferenceService
{
    public const int Bos = 1;

    private readonly SemaphoreSlim _turn = new(1, 1); // one job at a time, as the real service
    private int _depth;

    public int Capacity { get; init; } = 4;
    public TimeSpan PrefillDelay { get; init; }
    public TimeSpan TokenDelay { get; init; }
    public bool Stopping { get; set; }
    /// <summary>Rewrites the last event (e.g. to report other phase times).</summary>
    public Func<CompletedEvent, CompletedEvent> AlterCompletion { get; init; } = c => c;
    public HealthReport Health { get; set; } = new(true, "ready", null);
    public ServedModel Model { get; } = new("scripted-moe", 256, 100, "chatml", new DateTimeOffset(2024, 1, 2, 3, 4, 5, TimeSpan.Zero));
    public int QueueDepth => Volatile.Read(ref _depth);

    public ConcurrentQueue<CompletionJob> Jobs { get; } = new();
    public ConcurrentQueue<string> CancelledJobs { get; } = new();
    /// <summary>Completes with the request id of the first job whose token is cancelled.</summary>
    public TaskCompletionSource<string> FirstCancellation { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>Completes when the first job starts generating.</summary>
    public TaskCompletionSource Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int[] Tokenize(string text, bool addSpecialTokens = true) =>
        [.. (addSpecialTokens ? [Bos] : Array.Empty<int>()), .. text.Select(c => 10 + c % 90)];

    public string TokenText(int id) => $"tok{id}";

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages)
    {
        if (messages.Any(m => m.Role == "tool")) throw new RequestException("the template knows no role 'tool'", "messages");
        return string.Concat(messages.Select(m => $"<{m.Role}>{m.Content}"));
    }

    public QueueTicket Admit()
    {
        if (Stopping) throw new ServiceStoppingException();
        if (Interlocked.Increment(ref _depth) > Capacity)
        {
            Interlocked.Decrement(ref _depth);
            throw new QueueFullException(Capacity);
        }
        return new Ticket(this);
    }

    public async IAsyncEnumerable<CompletionEvent> RunAsync(QueueTicket ticket, CompletionJob job, [EnumeratorCancellation] CancellationToken cancel)
    {
        Jobs.Enqueue(job);
        if (job.PromptIds.Length + job.Options.MaxNewTokens > Model.ContextLength)
        {
            throw new RequestException($"prompt + max_tokens exceed the context of {Model.ContextLength}", "max_tokens",
                RequestErrorKind.ContextLength, "context_length_exceeded");
        }
        long queued = Stopwatch.GetTimestamp();
        await _turn.WaitAsync(CancellationToken.None);
        using var registration = cancel.Register(() =>
        {
            CancelledJobs.Enqueue(job.RequestId);
            FirstCancellation.TrySetResult(job.RequestId);
        });
        try
        {
            var queueTime = Stopwatch.GetElapsedTime(queued);
            Started.TrySetResult();
            long prefill = Stopwatch.GetTimestamp();
            bool cancelled = !await Wait(PrefillDelay, cancel);
            var prefillTime = Stopwatch.GetElapsedTime(prefill);
            long decode = Stopwatch.GetTimestamp();
            int sum = job.PromptIds.Sum();
            var text = new System.Text.StringBuilder();
            int n = 0;
            for (; n < job.Options.MaxNewTokens && !cancelled; n++)
            {
                if (n > 0 && !await Wait(TokenDelay, cancel)) { cancelled = true; break; }
                int id = (sum + n) % Model.VocabSize;
                text.Append($"<{id}>");
                yield return new TokenEvent(new GeneratedToken(id, $"<{id}>", -0.5f, []));
            }
            var finish = cancelled ? FinishReason.Cancelled : FinishReason.Length;
            yield return AlterCompletion(new CompletedEvent(finish, job.PromptIds.Length, n, text.ToString(), queueTime, prefillTime,
                n > 0 ? Stopwatch.GetElapsedTime(decode) : TimeSpan.Zero));
        }
        finally
        {
            _turn.Release();
        }
    }

    private static async Task<bool> Wait(TimeSpan delay, CancellationToken cancel)
    {
        if (cancel.IsCancellationRequested) return false;
        if (delay <= TimeSpan.Zero) return true;
        try
        {
            await Task.Delay(delay, cancel);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private sealed class Ticket(ScriptedInferenceService owner) : QueueTicket
    {
        private int _disposed;

        public override void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) Interlocked.Decrement(ref owner._depth);
        }
    }
}

using System.Diagnostics;
using System.Runtime.CompilerServices;
using Fiddler.Kernels.Generation;
using static Fiddler.Host.Serving.Telemetry.ServingTelemetry;

namespace Fiddler.Host.Serving.Telemetry;

/// <summary>
/// Traces and measures every job of the wrapped service: a "fiddler.request" span per job with children
/// "fiddler.queue", "fiddler.prefill" and "fiddler.decode" (placed from the <see cref="CompletedEvent"/>'s durations and
/// the first token's arrival), and the request metrics of <see cref="ServingTelemetry"/>. Wrap the engine once and
/// every frontend is instrumented.
/// </summary>
public sealed class InstrumentedInferenceService(IInferenceService inner, ServingTelemetry telemetry) : IInferenceService
{
    public ServedModel Model => inner.Model;
    public HealthReport Health => inner.Health;
    public int QueueDepth => inner.QueueDepth;
    public int[] Tokenize(string text, bool addSpecialTokens = true) => inner.Tokenize(text, addSpecialTokens);
    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages) => inner.ApplyChatTemplate(messages);
    public string TokenText(int id) => inner.TokenText(id);

    public QueueTicket Admit()
    {
        try
        {
            return inner.Admit();
        }
        catch (QueueFullException) { CountRequest(Outcomes.QueueFull); throw; }
        catch (ServiceStoppingException) { CountRequest(Outcomes.Unavailable); throw; }
    }

    public async IAsyncEnumerable<CompletionEvent> RunAsync(QueueTicket ticket, CompletionJob job,
        [EnumeratorCancellation] CancellationToken cancel)
    {
        string frontend = CurrentFrontend ?? "unknown";
        long start = Stopwatch.GetTimestamp();
        using var request = telemetry.Source.StartActivity("fiddler.request", ActivityKind.Internal);
        request?.SetTag(Tags.RequestId, job.RequestId);
        request?.SetTag(Tags.Model, inner.Model.Id);
        request?.SetTag(Tags.Frontend, frontend);
        request?.SetTag(Tags.PromptTokens, job.PromptIds.Length);

        DateTimeOffset? firstToken = null;
        CompletedEvent? completed = null;
        // Stays null while the consumer keeps reading; a consumer that stops early (client gone) leaves it null.
        string? outcome = null;
        var events = inner.RunAsync(ticket, job, cancel).GetAsyncEnumerator(cancel);
        try
        {
            while (true)
            {
                bool more;
                // C# allows no yield inside a try with a catch, so only the step into the engine is guarded.
                try
                {
                    more = await events.MoveNextAsync();
                }
                catch (Exception e)
                {
                    outcome = e switch
                    {
                        RequestException => Outcomes.Invalid,
                        ServiceStoppingException => Outcomes.Unavailable,
                        OperationCanceledException when cancel.IsCancellationRequested => Outcomes.Cancelled,
                        _ => Outcomes.Error,
                    };
                    if (outcome is Outcomes.Error) request?.SetStatus(ActivityStatusCode.Error, e.Message);
                    throw;
                }
                if (!more) break;
                switch (events.Current)
                {
                    case TokenEvent:
                        if (firstToken is null)
                        {
                            firstToken = DateTimeOffset.UtcNow;
                            telemetry.TimeToFirstToken.Record(Stopwatch.GetElapsedTime(start).TotalSeconds, Tag(Tags.Frontend, frontend));
                        }
                        telemetry.TokensGenerated.Add(1, Tag(Tags.Frontend, frontend));
                        break;
                    case CompletedEvent c:
                        completed = c;
                        outcome = c.Finish == FinishReason.Cancelled ? Outcomes.Cancelled : Outcomes.Ok;
                        if (request is not null) AddPhaseSpans(request, c, firstToken);
                        break;
                }
                yield return events.Current;
            }
        }
        finally
        {
            await events.DisposeAsync();
            outcome ??= Outcomes.Cancelled;
            CountRequest(outcome, frontend);
            telemetry.RequestDuration.Record(Stopwatch.GetElapsedTime(start).TotalSeconds,
                Tag(Tags.Frontend, frontend), Tag(Tags.Outcome, outcome));
            if (completed is { CompletionTokens: > 1 } && completed.Decode > TimeSpan.Zero)
            {
                telemetry.DecodeRate.Record((completed.CompletionTokens - 1) / completed.Decode.TotalSeconds, Tag(Tags.Frontend, frontend));
            }
            request?.SetTag(Tags.Outcome, outcome);
            if (completed is not null)
            {
                request?.SetTag(Tags.CompletionTokens, completed.CompletionTokens);
                request?.SetTag(Tags.PromptTokens, completed.PromptTokens);
                request?.SetTag(Tags.FinishReasons, new[] { completed.Finish.ToString().ToLowerInvariant() });
            }
        }
    }

    /// <summary>
    /// Lays the phases end to end, backwards from the first token: the engine measured their durations, we only
    /// saw the first token arrive (or, with none, the end: prefill then ends where decode began).
    /// </summary>
    private void AddPhaseSpans(Activity request, CompletedEvent c, DateTimeOffset? firstToken)
    {
        var now = DateTimeOffset.UtcNow;
        var prefillEnd = firstToken ?? now - c.Decode;
        var prefillStart = prefillEnd - c.Prefill;
        var queueStart = prefillStart - c.Queued;
        if (queueStart < request.StartTimeUtc) request.SetStartTime(queueStart.UtcDateTime);
        Span("fiddler.queue", request, queueStart, prefillStart);
        Span("fiddler.prefill", request, prefillStart, prefillEnd);
        Span("fiddler.decode", request, prefillEnd, prefillEnd + c.Decode);
    }

    private void Span(string name, Activity parent, DateTimeOffset start, DateTimeOffset end)
    {
        using var span = telemetry.Source.StartActivity(name, ActivityKind.Internal, parent.Context, startTime: start);
        span?.SetEndTime(end.UtcDateTime);
    }

    private void CountRequest(string outcome, string? frontend = null) =>
        telemetry.Requests.Add(1, Tag(Tags.Frontend, frontend ?? CurrentFrontend ?? "unknown"), Tag(Tags.Outcome, outcome));

    private static KeyValuePair<string, object?> Tag(string key, object? value) => new(key, value);
}

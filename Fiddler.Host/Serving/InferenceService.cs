using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using Fiddler.Actors.Runtime;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Text;

namespace Fiddler.Host.Serving;

/// <summary>The engine call the service makes: <see cref="FiddlerRuntime.GenerateAsync"/> (tests wrap it to inject faults).</summary>
public delegate IAsyncEnumerable<GeneratedToken> EngineCall(int[] prompt, GenerationOptions options, CancellationToken cancel);

/// <summary>A chat template as the service runs it; <see cref="Apply"/> throws <see cref="ArgumentException"/> for a
/// conversation the template rejects. Built from Kernels' <c>ChatTemplate</c> by the serve command.</summary>
public sealed record ChatFormatter(string Name, Func<IReadOnlyList<(string Role, string Content)>, string> Apply);

/// <summary>What the service serves and how many requests it admits.</summary>
public sealed record InferenceServiceOptions(string ModelId, int QueueSize = 16)
{
    /// <summary>Caps prompt + completion below the model's max_position_embeddings (e.g. to bound the KV cache); null: the model's.</summary>
    public int? MaxContext { get; init; }

    public DateTimeOffset Created { get; init; } = DateTimeOffset.UtcNow;

    /// <summary>Told of every engine failure of a request (the exception whole, with its stack), once, whichever frontend
    /// the request came through; the frontends answer it as a server error. Null: not logged.</summary>
    public Action<Exception>? EngineFailureLog { get; init; }
}

/// <summary>
/// <see cref="IInferenceService"/> over the in-process actor API: validates jobs against the model, holds them in a
/// <see cref="RequestQueue"/>, streams each through <see cref="FiddlerRuntime.GenerateAsync"/> and times it. Health
/// comes from a real one-token generation (start-up, and again after any engine failure). All client text reaches the
/// native tokenizer through <see cref="Tokenize"/> only.
/// </summary>
public sealed class InferenceService : IInferenceService, IAsyncDisposable
{
    private readonly EngineCall _engine;
    private readonly HfTokenizer? _tokenizer;
    private readonly ChatFormatter? _chat;
    private readonly RequestQueue _queue;
    private readonly HashSet<int> _eos;
    private readonly CancellationTokenSource _abort = new();
    private readonly EngineHealth _health;
    private readonly Action<Exception>? _engineFailureLog;

    /// <param name="engine">Defaults to <paramref name="runtime"/>'s <see cref="FiddlerRuntime.GenerateAsync"/> (the health probe's
    /// then leaves the layer statistics alone); a given one also runs the probe.</param>
    public InferenceService(FiddlerRuntime runtime, HfTokenizer? tokenizer, ChatFormatter? chat, InferenceServiceOptions options,
        EngineCall? engine = null)
    {
        ArgumentNullException.ThrowIfNull(runtime);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.ModelId);
        var config = runtime.Model.Config;
        _engine = engine ?? runtime.GenerateAsync;
        _tokenizer = tokenizer;
        _chat = chat;
        _engineFailureLog = options.EngineFailureLog;
        _queue = new RequestQueue(options.QueueSize);
        _eos = [.. config.EosTokenIds];
        if (tokenizer?.EosId is int eos) _eos.Add(eos);
        int probeToken = tokenizer?.BosId ?? config.BosTokenId ?? 0;
        if (probeToken < 0 || probeToken >= config.VocabSize) probeToken = 0;
        // The probe's layers stay out of /metrics' layer statistics: those count what clients asked for.
        _health = new EngineHealth(engine ?? ((p, o, c) => runtime.GenerateAsync(p, o, countInStats: false, c)), probeToken, _abort);
        if (options.MaxContext is < 2) throw new ArgumentException($"the context cap must be at least 2 tokens, got {options.MaxContext}");
        int context = Math.Min(config.MaxPositionEmbeddings, options.MaxContext ?? int.MaxValue);
        Model = new ServedModel(options.ModelId, context, config.VocabSize, chat?.Name, options.Created);
    }

    public ServedModel Model { get; }

    public HealthReport Health => _health.Report;

    public int QueueDepth => _queue.Count;

    public int QueueCapacity => _queue.Capacity;

    /// <summary>Runs the start-up probe; throws when the engine cannot generate one token.</summary>
    public async Task StartAsync(CancellationToken cancel = default)
    {
        Task probe = _health.StartProbe();
        await probe.WaitAsync(cancel);
        if (!Health.Ready) throw new InvalidOperationException($"the engine failed its start-up probe: {Health.Detail}");
    }

    public int[] Tokenize(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_tokenizer is null)
            throw new RequestException($"model '{Model.Id}' has no tokenizer.json: send the prompt as an array of token ids", "prompt");
        // The native tokenizer aborts the process on a Rust panic; text that is not valid UTF-16 never reaches it.
        if (FirstInvalidUtf16(text) is int at)
            throw new RequestException($"the text has an unpaired UTF-16 surrogate at index {at}");
        // Encoding runs before the request is queued, on the cores the CPU experts use: a text that cannot fit the context
        // whatever its tokens (twice the longest token's length per token, for normalizers that shorten text) is refused
        // without encoding it.
        long most = (long)Model.ContextLength * _tokenizer.MaxTokenChars * 2;
        if (text.Length > most)
            throw new RequestException($"the text has {text.Length} characters, more than this model's context of {Model.ContextLength} tokens " +
                $"can hold (a token covers at most {_tokenizer.MaxTokenChars})", "prompt", RequestErrorKind.ContextLength, "context_length_exceeded");
        try { return _tokenizer.Encode(text, addSpecialTokens); }
        catch (ArgumentException e) { throw new RequestException($"the tokenizer rejected the text: {e.Message}"); }
    }

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (_chat is null)
            throw new RequestException($"model '{Model.Id}' has no chat template (its tokenizer_config.json has no chat_template): " +
                "use /v1/completions with a prompt", "messages");
        if (messages.Count == 0) throw new RequestException("messages must contain at least one message", "messages");
        try { return _chat.Apply([.. messages.Select(m => (m.Role, m.Content))]); }
        catch (ArgumentException e) { throw new RequestException($"the chat template rejected the conversation: {e.Message}", "messages"); }
        // Start-up trial renders rule out templates the interpreter cannot run; one that still meets an unsupported
        // construct on this conversation's path is refused as a request the server cannot take, not a server fault.
        catch (NotSupportedException e) { throw new RequestException($"the chat template cannot render this conversation: {e.Message}", "messages"); }
    }

    public string TokenText(int id)
    {
        string? piece = _tokenizer?.IdToToken(id);
        if (piece is null) return "";
        // SentencePiece byte-fallback pieces: ASCII bytes as their character, others as the piece (as HF's convert_ids_to_tokens).
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b) && b < 0x80)
            return ((char)b).ToString();
        return piece.Replace('\u2581', ' ');
    }

    public QueueTicket Admit() => _queue.TryEnter(out var ticket) switch
    {
        RequestQueue.Admission.Admitted => ticket!,
        RequestQueue.Admission.Full => throw new QueueFullException(_queue.Capacity),
        _ => throw new ServiceStoppingException(),
    };

    public async IAsyncEnumerable<CompletionEvent> RunAsync(QueueTicket ticket, CompletionJob job,
        [EnumeratorCancellation] CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(job);
        var turn = ticket as RequestQueue.Ticket ?? throw new ArgumentException("the ticket was not issued by this service", nameof(ticket));
        using var _ = turn; // the place is given back however the job ends
        Validate(job);

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel, _abort.Token);
        var clock = Stopwatch.StartNew();
        bool gotTurn;
        try
        {
            await turn.WaitTurnAsync(stop.Token);
            gotTurn = true;
        }
        catch (OperationCanceledException)
        {
            gotTurn = false;
        }
        var queued = clock.Elapsed;
        if (!gotTurn)
        {
            yield return new CompletedEvent(FinishReason.Cancelled, job.PromptIds.Length, 0, "", queued, TimeSpan.Zero, TimeSpan.Zero);
            yield break;
        }

        clock.Restart();
        var prefill = TimeSpan.Zero;
        var ids = new List<int>();
        var text = new StringBuilder();
        var tokens = _engine(job.PromptIds, job.Options, stop.Token).GetAsyncEnumerator(CancellationToken.None);
        bool ended = false;
        try
        {
            while (true)
            {
                bool more;
                try { more = await tokens.MoveNextAsync(); }
                // Validate ran the same checks, so this should not happen; any other exception is the engine's, an
                // ArgumentException included (NaN logits, a refused weight copy): unhealthy, re-probed, a 500, not a 400.
                catch (GenerationRequestException e) { throw new RequestException(e.Message); }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    _health.EngineFailed(e);
                    _engineFailureLog?.Invoke(e);
                    throw;
                }
                if (!more) { ended = true; break; }
                var token = tokens.Current;
                if (token.Id >= 0)
                {
                    ids.Add(token.Id);
                    if (ids.Count == 1) { prefill = clock.Elapsed; clock.Restart(); }
                }
                text.Append(token.Text);
                yield return new TokenEvent(token);
            }
        }
        finally
        {
            // The consumer left early (client gone, or a frontend that stopped reading before its token fired, as gRPC
            // does when a deadline completes the call first): cancel the engine's token, not only its enumerator, so an
            // engine that stops on the token stops too. Disposing `stop` without cancelling it would leave it running.
            if (!ended) await stop.CancelAsync();
            // Stops the engine within one decode step if the consumer left early (client gone); its KV cache is freed then.
            await tokens.DisposeAsync();
        }
        var decode = ids.Count == 0 ? TimeSpan.Zero : clock.Elapsed;
        yield return new CompletedEvent(Finish(job, ids, stop.IsCancellationRequested), job.PromptIds.Length, ids.Count, text.ToString(),
            queued, prefill, decode);
    }

    /// <summary>
    /// Graceful stop: new requests are refused at once (<see cref="ServiceStoppingException"/>); admitted ones may
    /// finish within <paramref name="grace"/>, then waiting ones are refused and running ones cancelled.
    /// </summary>
    public async Task ShutdownAsync(TimeSpan grace, CancellationToken skipGrace = default)
    {
        _health.Stopping();
        _queue.BeginShutdown(failWaiting: false);
        var empty = _queue.WhenEmptyAsync();
        if (await Task.WhenAny(empty, Task.Delay(grace, skipGrace)) == empty) return;
        _queue.BeginShutdown(failWaiting: true);
        await _abort.CancelAsync();
        // A cancelled generation stops within one decode step; a consumer still writing to a slow client is not waited for long.
        await Task.WhenAny(empty, Task.Delay(TimeSpan.FromSeconds(10)));
    }

    public async ValueTask DisposeAsync()
    {
        await ShutdownAsync(TimeSpan.Zero);
        Task? probe = _health.LastProbe;
        if (probe is not null) await probe;
        // _abort is not disposed: a job admitted before shutdown may still link to it (a disposed source would turn that
        // into ObjectDisposedException, a 500); it has no timer, so there is nothing to free.
    }

    private void Validate(CompletionJob job)
    {
        try { job.Options.Validate(); }
        catch (ArgumentException e) { throw new RequestException(e.Message); }
        if (job.PromptIds.Length == 0) throw new RequestException("the prompt is empty: give at least one token", "prompt");
        foreach (int id in job.PromptIds)
            if (id < 0 || id >= Model.VocabSize)
                throw new RequestException($"prompt token id {id} is outside the vocabulary (0..{Model.VocabSize - 1})", "prompt");
        if ((long)job.PromptIds.Length + job.Options.MaxNewTokens > Model.ContextLength)
            throw new RequestException(
                $"This model's maximum context length is {Model.ContextLength} tokens. However, you requested " +
                $"{(long)job.PromptIds.Length + job.Options.MaxNewTokens} tokens ({job.PromptIds.Length} in the prompt, " +
                $"{job.Options.MaxNewTokens} for the completion). Please reduce the prompt or the completion length.",
                "max_tokens", RequestErrorKind.ContextLength, "context_length_exceeded");
    }

    /// <summary>
    /// The engine's finish reason, recovered from the stream (GenerateAsync yields tokens, not the result): it ends
    /// on EOS first, then on a stop string, else at the token limit — the order of Kernels' Generator.
    /// </summary>
    private FinishReason Finish(CompletionJob job, List<int> ids, bool cancelled)
    {
        int max = job.Options.MaxNewTokens;
        if (cancelled && ids.Count < max) return FinishReason.Cancelled;
        if (ids.Count > 0 && job.Options.StopOnEos && _eos.Contains(ids[^1])) return FinishReason.Eos;
        if (ids.Count < max) return FinishReason.Stop;
        // At the limit a stop string may have completed on the very last token: did the whole text contain one?
        if (job.Options.StopStrings.Count > 0 && _tokenizer is not null
            && new StopStringMatcher(job.Options.StopStrings).Push(StreamingDecoder.DecodeAfter(_tokenizer, job.PromptIds, ids)).Stopped)
            return FinishReason.Stop;
        return FinishReason.Length;
    }

    private static int? FirstInvalidUtf16(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (!char.IsSurrogate(s[i])) continue;
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            return i;
        }
        return null;
    }
}

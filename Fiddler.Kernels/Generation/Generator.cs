using System.Diagnostics;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Text;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Generation;

/// <summary>
/// Prefill then decode, one sequence: sample, stream text, stop on EOS, stop strings or the token limit.
/// The KV cache is sized to prompt + max new tokens and freed when the generation ends.
/// </summary>
public sealed class Generator(MixtralForCausalLM model, HfTokenizer? tokenizer)
{
    /// <summary>
    /// Greedy decode through <see cref="DecodePipeline"/> (default): the host queues each step before it reads the token
    /// before it. False: step, read, sample, step (the same tokens; kept for comparison).
    /// </summary>
    public bool Pipelined { get; init; } = true;

    /// <summary>Largest context this model accepts (prompt + new tokens).</summary>
    public int ContextLength => model.Config.MaxPositionEmbeddings;

    public GenerationResult Run(IReadOnlyList<int> prompt, GenerationOptions options,
        Action<GeneratedToken>? onToken = null, CancellationToken cancel = default)
    {
        options.Validate();
        Check(prompt, options);
        var sampler = new Sampler(options.Sampling);
        // The prompt's last ids as context: the first new token reads as it does after the prompt (" Paris", not "Paris").
        var decoder = tokenizer is null ? null : new StreamingDecoder(tokenizer, context: StreamingDecoder.ContextOf(prompt));
        var stops = new StopStringMatcher(options.StopStrings);
        var eos = new HashSet<int>(model.Config.EosTokenIds);
        if (tokenizer?.EosId is int tokEos) eos.Add(tokEos);

        using var noGrad = no_grad();
        using var cache = model.NewCache(prompt.Count + options.MaxNewTokens);
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        var finish = FinishReason.Length;
        var clock = Stopwatch.StartNew();
        TimeSpan prefill = TimeSpan.Zero;

        // One token from its logits on the host: sample, stream, and say whether the generation ends with it.
        bool ended = false;
        bool Emit(float[] values)
        {
            if (cancel.IsCancellationRequested) { finish = FinishReason.Cancelled; return ended = true; }
            int id = sampler.Sample(values);
            var (topIds, topLogprobs) = options.TopLogprobs > 0 ? sampler.TopLogprobs(values, options.TopLogprobs) : ([], []);
            float logprob = LogSoftmaxAt(values, id);
            tokens.Add(id);

            bool isEos = options.StopOnEos && eos.Contains(id);
            string delta = isEos || decoder is null ? "" : decoder.Push(id);
            var (emit, stopped, _) = stops.Push(delta);
            text.Append(emit);
            var top = options.TopLogprobs == 0 ? [] : topIds.Zip(topLogprobs).Select(p => (p.First, p.Second)).ToArray();
            onToken?.Invoke(new GeneratedToken(id, emit, logprob, top));
            if (isEos) finish = FinishReason.Eos;
            else if (stopped) finish = FinishReason.Stop;
            return ended = isEos || stopped || tokens.Count == options.MaxNewTokens;
        }

        // One buffer for every token's logits on the host (a fresh one per token would be a large-object-heap array).
        var values = new float[model.Config.VocabSize];
        // A request cancelled before or during its prefill stops there (between layers), with no token.
        using (var first = cancel.IsCancellationRequested ? null : Step(prompt.Select(i => (long)i).ToArray(), cache, cancel))
        {
            prefill = clock.Elapsed;
            clock.Restart();
            if (first is null)
            {
                finish = FinishReason.Cancelled;
                ended = true;
            }
            else
            {
                Sampler.ToCpuFloat32(first, values);
                Emit(values);
            }
        }
        if (!ended && Pipelined && options.Sampling.IsGreedy)
        {
            // Each step queued before the host reads the token before it (see DecodePipeline): the same tokens, without
            // the device and the CPU pool idling at every token boundary. No step is queued past the token limit.
            using var pipeline = new DecodePipeline(model, cache, tokens[^1]);
            while (tokens.Count + (pipeline.Pending ? 1 : 0) < options.MaxNewTokens && pipeline.Advance(logits => !Emit(logits))) { }
            pipeline.Finish(ended ? null : logits => !Emit(logits));
        }
        else
        {
            while (!ended)
            {
                using var logits = Step([tokens[^1]], cache, cancel);
                if (logits is null)
                {
                    finish = FinishReason.Cancelled;
                    break;
                }
                Sampler.ToCpuFloat32(logits, values);
                Emit(values);
            }
        }
        if (finish is FinishReason.Length or FinishReason.Eos)
        {
            var tail = stops.Push(decoder?.Flush() ?? "");
            string rest = tail.Text + (tail.Stopped ? "" : stops.Flush());
            if (rest.Length > 0) { text.Append(rest); onToken?.Invoke(new GeneratedToken(-1, rest, 0, [])); }
        }
        return new GenerationResult([.. prompt], [.. tokens], text.ToString(), finish, prefill, clock.Elapsed);
    }

    /// <summary>Throws <see cref="GenerationRequestException"/> for prompts this model cannot take.</summary>
    /// <param name="sequences">Rows of the KV cache the request allocates (its beams).</param>
    public void Check(IReadOnlyList<int> prompt, GenerationOptions options, int sequences = 1)
    {
        if (prompt.Count == 0) throw new GenerationRequestException("the prompt is empty: give at least one token");
        if (tokenizer is null && options.StopStrings.Count > 0) // with no text to match, they would never stop anything
            throw new GenerationRequestException("stop strings need the model's tokenizer, and this model has none (no tokenizer.json)");
        int vocab = model.Config.VocabSize;
        foreach (int id in prompt)
            if (id < 0 || id >= vocab) throw new GenerationRequestException($"prompt token id {id} is outside the vocabulary (0..{vocab - 1})");
        if ((long)prompt.Count + options.MaxNewTokens > ContextLength)
            throw new GenerationRequestException($"prompt ({prompt.Count} tokens) + max tokens ({options.MaxNewTokens}) exceeds the context length {ContextLength}");
        // On the host the KV cache comes out of RAM: a request whose cache cannot fit is refused here, in one line, not
        // by the allocator with a native stack trace (on CUDA the engine fits the context to the device's memory).
        if (model.Device.type == TorchSharp.DeviceType.CPU && Runtime.HostMemory.AvailableBytes() is long available)
        {
            long tokens = prompt.Count + (long)options.MaxNewTokens, bytes = model.KvCacheBytes(tokens, sequences);
            if (bytes > available)
                throw new GenerationRequestException($"prompt + max tokens ({tokens}) need a KV cache of {bytes / (double)(1L << 30):F1} GiB" +
                    $"{(sequences > 1 ? $" for {sequences} beams" : "")}, more than the {available / (double)(1L << 30):F1} GiB this host has free: ask for fewer tokens");
        }
    }

    private static float LogSoftmaxAt(float[] logits, int id)
    {
        float max = logits.Max();
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        return (float)(logits[id] - max - Math.Log(sum));
    }

    /// <summary>One forward's last-position logits on the host; null when <paramref name="cancel"/> fired before one of its layers.</summary>
    private Tensor? Step(long[] ids, Cache.KvCache cache, CancellationToken cancel)
    {
        using var input = tensor(ids, ScalarType.Int64).unsqueeze(0);   // [1, T]
        using var logits = model.Forward(input, cache, allPositions: false, stop: cancel.CanBeCanceled ? () => cancel.IsCancellationRequested : null); // [1, V]
        return logits?[0].cpu();
    }
}

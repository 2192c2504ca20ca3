using System.CommandLine;
using System.Text.Json;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Sampling;
using Spectre.Console;

namespace Fiddler.Host.Cli;

/// <summary><c>fiddler generate</c>: load a model, run one prompt, stream the text (or print one JSON object).</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face Mixtral directory (default: the embedded demo model)" };
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text" };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids, instead of text" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "New tokens at most", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "Keep the K most likely tokens (0 or -1 = off)", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 0.95f };
        var seed = new Option<ulong?>("--seed") { Description = "Sampling seed (reproducible output)" };
        var stop = new Option<string[]>("--stop") { Description = "Stop string (repeatable)", AllowMultipleArgumentsPerToken = false };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var dtype = new Option<string?>("--dtype") { Description = "bfloat16 | float16 | float32 (default: the checkpoint's)" };
        var libtorch = new Option<string?>("--libtorch") { Description = $"Folder of a CUDA libtorch (default: ${TorchRuntime.LibTorchEnvironmentVariable}, else python3's torch)" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object: ids, text, per-step top-5 logprobs, timings" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Do not stop at the end-of-sequence token" };
        var budget = new Option<string?>("--gpu-budget") { Description = "Offload: GPU memory for weights + KV cache (e.g. 24GiB); other experts stay in host memory" };
        var popularity = new Option<string?>("--popularity") { Description = "popularity.json from `fiddler profile` (placement order)" };
        var beamWidth = new Option<int>("--beam-width") { Description = "Beam search with W beams (deterministic; sampling options are not used)", DefaultValueFactory = _ => 1 };

        var command = new Command("generate", "Generate text from a prompt");
        foreach (var o in new Option[] { model, prompt, promptIds, maxTokens, temperature, topK, topP, seed, stop, device, dtype, libtorch, json, ignoreEos, budget, popularity, beamWidth })
            command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            string? text = r.GetValue(prompt), ids = r.GetValue(promptIds);
            if ((text is null) == (ids is null)) throw new ArgumentException("give exactly one of --prompt or --prompt-ids");
            if (r.GetValue(popularity) is not null && r.GetValue(budget) is null)
                throw new ArgumentException("--popularity orders the experts placed under --gpu-budget: give --gpu-budget too");
            var options = new GenerationOptions
            {
                MaxNewTokens = r.GetValue(maxTokens),
                // -1 is vLLM's and the server's "off" too.
                Sampling = new SamplingOptions(r.GetValue(temperature), r.GetValue(topK) == -1 ? 0 : r.GetValue(topK), r.GetValue(topP), r.GetValue(seed)),
                StopStrings = r.GetValue(stop) ?? [],
                StopOnEos = !r.GetValue(ignoreEos),
                TopLogprobs = r.GetValue(json) ? 5 : 0,
            };
            options.Validate();
            if (r.GetValue(beamWidth) != 1 && options.StopStrings.Count > 0)
                throw new ArgumentException("--stop does not apply to beam search (--beam-width): leave one of them out");
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            var dt = r.GetValue(dtype) is { } d ? TorchRuntime.ParseDType(d) : (TorchSharp.torch.ScalarType?)null;
            string dir = DefaultModel.Resolve(r.GetValue(model));
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory {dir} does not exist");
            var clock = System.Diagnostics.Stopwatch.StartNew();
            // The prompt is tokenized first: a request the context cannot hold fails before minutes of loading, and under
            // a budget the placement reserves the KV cache this request needs (its prompt and new tokens, once per beam).
            int promptLength = ids is not null ? ParseIds(ids).Length : TokenCount(dir, text!);
            int contextLength = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(dir, "config.json")).MaxPositionEmbeddings;
            if ((long)promptLength + options.MaxNewTokens > contextLength)
                throw new GenerationRequestException($"prompt ({promptLength} tokens) + max tokens ({options.MaxNewTokens}) exceeds the context length {contextLength}");
            using var engine = r.GetValue(budget) is { } b
                ? OffloadEngine.Create(new EngineOptions
                {
                    ModelDir = dir, Device = dev, DType = dt, GpuBudgetBytes = MemoryBudget.Parse(b), PopularityPath = r.GetValue(popularity),
                    ContextTokens = promptLength + options.MaxNewTokens, Sequences = r.GetValue(beamWidth),
                }, m => Console.Error.WriteLine(m))
                : null;
            // Without a budget, on a GPU: does the whole model fit with this request's KV (prompt + new tokens, per beam)?
            if (engine is null && dev.type == TorchSharp.DeviceType.CUDA)
                OffloadEngine.CheckWholeModelFits(dir, dev, dt, promptLength + options.MaxNewTokens, r.GetValue(beamWidth));
            using var loaded = engine is null ? Load(dir, new LoadOptions(dev, dt), quiet: r.GetValue(json)) : null;
            var (model_, tokenizer) = engine is not null ? (engine.Model, engine.Tokenizer) : (loaded!.Model, loaded.Tokenizer);
            var source = new Source(Path.GetFullPath(dir), loaded?.LoadTime ?? clock.Elapsed);
            int[] promptTokens = ids is not null ? ParseIds(ids)
                : (tokenizer ?? throw new ArgumentException("this model has no tokenizer.json: use --prompt-ids")).Encode(text!);
            var generator = new Generator(model_, tokenizer);
            generator.Check(promptTokens, options);
            if (r.GetValue(beamWidth) != 1)
                return RunBeams(model_, tokenizer, promptTokens, r.GetValue(beamWidth), options, r.GetValue(json));
            if (options.Sampling.Seed is null && DrawnSeed(options.Sampling.Temperature) is ulong drawn) // every check passed: it runs
                options = options with { Sampling = options.Sampling with { Seed = drawn } };
            return r.GetValue(json) ? PrintJson(generator, source, promptTokens, options) : Stream(generator, source, promptTokens, options);
        });
        return command;
    }

    /// <summary>
    /// A sampled run without <c>--seed</c> draws one here and says it on stderr, so the run can be repeated
    /// (<c>--seed N</c>); greedy decoding (temperature 0) draws nothing.
    /// </summary>
    private static ulong? DrawnSeed(float temperature)
    {
        if (temperature == 0) return null;
        ulong drawn = BitConverter.ToUInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(sizeof(ulong)));
        Console.Error.WriteLine($"sampling seed {drawn} (--seed {drawn} repeats this run)");
        return drawn;
    }

    private static LoadedModel Load(string dir, LoadOptions options, bool quiet)
    {
        var err = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (quiet || Console.IsErrorRedirected) return ModelLoader.Load(dir, options);
        LoadedModel? loaded = null;
        err.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask($"loading {Path.GetFileName(dir.TrimEnd('/'))}");
                loaded = ModelLoader.Load(dir, options, new Progress<LoadProgress>(p =>
                {
                    task.MaxValue = p.BytesTotal;
                    task.Value = p.BytesDone;
                }));
                task.Value = task.MaxValue;
            });
        return loaded!;
    }

    private static int Stream(Generator generator, Source loaded, int[] prompt, GenerationOptions options)
    {
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
        var result = generator.Run(prompt, options, t => Console.Write(t.Text), cancel.Token);
        Console.WriteLine();
        Console.Error.WriteLine($"[{result.Tokens.Length} tokens, finish: {result.Finish.ToString().ToLowerInvariant()}; " +
            $"load {loaded.LoadTime.TotalSeconds:F2} s, prefill {prompt.Length} tokens {result.Prefill.TotalMilliseconds:F0} ms, " +
            $"decode {result.DecodeTokensPerSecond:F2} tok/s]");
        return 0;
    }

    private static int PrintJson(Generator generator, Source loaded, int[] prompt, GenerationOptions options)
    {
        var steps = new List<object>();
        var result = generator.Run(prompt, options, t =>
        {
            if (t.Id >= 0) steps.Add(new { id = t.Id, logprob = t.Logprob, top = t.Top.Select(p => new { id = p.Id, logprob = p.Logprob }) });
        });
        var output = new
        {
            model = loaded.Directory,
            prompt_ids = result.PromptIds,
            tokens = result.Tokens,
            text = result.Text,
            finish_reason = result.Finish.ToString().ToLowerInvariant(),
            steps,
            load_s = loaded.LoadTime.TotalSeconds,
            prefill_s = result.Prefill.TotalSeconds,
            decode_tok_s = result.DecodeTokensPerSecond,
        };
        Console.WriteLine(JsonSerializer.Serialize(output));
        return 0;
    }

    private sealed record Source(string Directory, TimeSpan LoadTime);

    private static int RunBeams(Fiddler.Kernels.Modules.MixtralForCausalLM model, Fiddler.Kernels.Text.HfTokenizer? tokenizer,
        int[] prompt, int width, GenerationOptions options, bool json)
    {
        var eos = new HashSet<int>(options.StopOnEos ? model.Config.EosTokenIds : []);
        if (options.StopOnEos && tokenizer?.EosId is int e) eos.Add(e);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var beams = new BeamSearch(model).Run(prompt, width, options.MaxNewTokens, eos);
        string Text(int[] ids) => tokenizer is null ? "" : Fiddler.Kernels.Text.StreamingDecoder.DecodeAfter(tokenizer, prompt, [.. ids.Where(i => !eos.Contains(i))]);
        if (json)
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                prompt_ids = prompt,
                tokens = beams[0].Tokens,
                text = Text(beams[0].Tokens),
                beams = beams.Select(b => new { tokens = b.Tokens, logprob = b.LogProb, score = b.Score, text = Text(b.Tokens) }),
                seconds = clock.Elapsed.TotalSeconds,
            }));
        else
        {
            Console.WriteLine(Text(beams[0].Tokens));
            Console.Error.WriteLine($"[beam search, {width} beams: best of {beams.Count}, {beams[0].Tokens.Length} tokens, " +
                $"score {beams[0].Score:F3}, {clock.Elapsed.TotalSeconds:F2} s]");
        }
        return 0;
    }

    /// <summary>The prompt's length in tokens with the model directory's tokenizer (the one the engine will load).</summary>
    private static int TokenCount(string dir, string text)
    {
        if (!File.Exists(Path.Combine(dir, "tokenizer.json"))) throw new ArgumentException("this model has no tokenizer.json: use --prompt-ids");
        using var tokenizer = new Fiddler.Kernels.Text.HfTokenizer(dir);
        return tokenizer.Encode(text).Length;
    }

    public static int[] ParseIds(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new ArgumentException("--prompt-ids is empty");
        return parts.Select(p => int.TryParse(p, out int v) ? v : throw new ArgumentException($"--prompt-ids: '{p}' is not an integer")).ToArray();
    }
}

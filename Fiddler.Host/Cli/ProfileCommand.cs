using System.CommandLine;
using System.Text.Json;
using Fiddler.Actors.Placement;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Sampling;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler profile</c>: runs a prompt set through the model and counts how often each (layer, expert) is chosen,
/// prompt and generated tokens alike; placement (<c>--popularity</c>) puts the most chosen experts on the GPU.
/// </summary>
public static class ProfileCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face Mixtral directory (default: the embedded model)" };
        var prompts = new Option<string>("--prompts") { Description = "JSONL of {\"text\": ...}, or a ShareGPT JSON file", Required = true };
        var outFile = new Option<string>("--out") { DefaultValueFactory = _ => "popularity.json" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per prompt (greedy)", DefaultValueFactory = _ => 32 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        var libtorch = new Option<string?>("--libtorch");
        var command = new Command("profile", "Count expert popularity over a prompt set");
        foreach (var o in new Option[] { model, prompts, outFile, maxTokens, device, libtorch }) command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            var texts = ReadPrompts(r.GetValue(prompts)!);
            // Before any prompt runs: a folder that does not exist would otherwise fail only after all of them.
            string outPath = Path.GetFullPath(r.GetValue(outFile)!);
            if (Path.GetDirectoryName(outPath) is { } outDir && !Directory.Exists(outDir))
                throw new ArgumentException($"--out: the folder {outDir} does not exist");
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            string dir = DefaultModel.Resolve(r.GetValue(model));
            using var loaded = ModelLoader.Load(dir, new LoadOptions(dev));
            var tokenizer = loaded.Tokenizer ?? throw new ArgumentException($"{dir} has no tokenizer.json");
            var config = loaded.Model.Config;
            var popularity = new ExpertPopularity(Path.GetFileName(dir.TrimEnd('/')), config.NumHiddenLayers, config.NumLocalExperts);
            loaded.Model.SetRoutingObserver((layer, assignments) =>
            {
                foreach (var a in assignments)
                    for (int i = 0; i < a.Tokens.Length; i++) popularity.Record(layer, a.Expert);
            });
            var generator = new Generator(loaded.Model, tokenizer);
            var options = new GenerationOptions { MaxNewTokens = r.GetValue(maxTokens), Sampling = SamplingOptions.Greedy };
            long tokens = 0;
            foreach (var text in texts)
            {
                int[] ids = tokenizer.Encode(text);
                int room = config.MaxPositionEmbeddings - ids.Length;
                if (room < 1) { Console.Error.WriteLine($"skipped a prompt of {ids.Length} tokens (context {config.MaxPositionEmbeddings})"); continue; }
                var result = generator.Run(ids, options with { MaxNewTokens = Math.Min(options.MaxNewTokens, room) });
                tokens += ids.Length + result.Tokens.Length;
            }
            loaded.Model.SetRoutingObserver(null);
            popularity.AddTokens(tokens);
            popularity.Save(r.GetValue(outFile)!);
            Console.WriteLine($"{texts.Count} prompts, {tokens} tokens → {r.GetValue(outFile)}");
            return 0;
        });
        return command;
    }

    /// <summary>Prompts from JSONL (one {"text": ...} per line) or ShareGPT JSON (the human turns of each conversation).</summary>
    public static List<string> ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: prompts file not found");
        string content = File.ReadAllText(path);
        var texts = new List<string>();
        try
        {
            if (content.TrimStart().StartsWith('['))
            {
                foreach (var conv in JsonDocument.Parse(content).RootElement.EnumerateArray())
                    if (conv.TryGetProperty("conversations", out var turns))
                        foreach (var turn in turns.EnumerateArray())
                            if (turn.GetProperty("from").GetString() is "human" or "user")
                                texts.Add(turn.GetProperty("value").GetString() ?? "");
            }
            else
            {
                int line = 0;
                foreach (var raw in content.Split('\n'))
                {
                    line++;
                    if (raw.Trim().Length == 0) continue;
                    var doc = JsonDocument.Parse(raw).RootElement;
                    if (doc.ValueKind != JsonValueKind.Object || !doc.TryGetProperty("text", out var text))
                        throw new InvalidDataException($"{path}:{line}: not an object with a \"text\" field");
                    texts.Add(text.ValueKind == JsonValueKind.String ? text.GetString()! : throw new InvalidDataException($"{path}:{line}: \"text\" is not a string"));
                }
            }
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: not JSONL of {{\"text\": ...}} nor ShareGPT JSON ({e.Message})", e);
        }
        texts.RemoveAll(string.IsNullOrWhiteSpace);
        if (texts.Count == 0) throw new InvalidDataException($"{path}: no prompts");
        return texts;
    }
}

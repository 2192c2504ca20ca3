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
            // Everything that can be checked is checked before the model loads (minutes at full size) and the prompts run.
            string outPath = OutputFile.CheckWritable(r.GetValue(outFile)!, "--out");
            var options = new GenerationOptions { MaxNewTokens = r.GetValue(maxTokens), Sampling = SamplingOptions.Greedy };
            options.Validate();
            string dir = DefaultModel.Resolve(r.GetValue(model));
            if (!File.Exists(Path.Combine(dir, "tokenizer.json"))) throw new ArgumentException($"{dir} has no tokenizer.json: profile runs text prompts");
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            using var loaded = ModelLoader.Load(dir, new LoadOptions(dev));
            var tokenizer = loaded.Tokenizer ?? throw new ArgumentException($"{dir} has no tokenizer.json");
            var config = loaded.Model.Config;
            var popularity = new ExpertPopularity(Path.GetFileName(dir.TrimEnd('/')), config.NumHiddenLayers, config.NumLocalExperts);
            long routed = 0; // choices in layer 0: each token that ran made top-k of them
            loaded.Model.SetRoutingObserver((layer, assignments) =>
            {
                foreach (var a in assignments)
                    for (int i = 0; i < a.Tokens.Length; i++) popularity.Record(layer, a.Expert);
                if (layer == 0) routed += assignments.Sum(a => a.Tokens.Length);
            });
            // Not pipelined: a pipelined decode queues the next step before it knows the token ends the prompt's run, and
            // the layers of that step it gets through before stopping would count choices for a token that never runs.
            var generator = new Generator(loaded.Model, tokenizer) { Pipelined = false };
            int ran = 0;
            foreach (var text in texts)
            {
                int[] ids = tokenizer.Encode(text);
                int room = config.MaxPositionEmbeddings - ids.Length;
                if (room < 1) { Console.Error.WriteLine($"skipped a prompt of {ids.Length} tokens (context {config.MaxPositionEmbeddings})"); continue; }
                generator.Run(ids, options with { MaxNewTokens = Math.Min(options.MaxNewTokens, room) });
                ran++;
            }
            loaded.Model.SetRoutingObserver(null);
            if (ran == 0)
                throw new InvalidDataException($"no prompt of {texts.Count} fits the model's context ({config.MaxPositionEmbeddings} tokens): nothing to count, {outPath} not written");
            // The tokens the model ran (the last generated token of each prompt is sampled, never run).
            long tokens = routed / config.NumExpertsPerTok;
            popularity.AddTokens(tokens);
            popularity.Save(outPath);
            Console.WriteLine($"{ran} prompts{(ran < texts.Count ? $" ({texts.Count - ran} skipped)" : "")}, {tokens} tokens → {r.GetValue(outFile)}");
            return 0;
        });
        return command;
    }

    /// <summary>Prompts from JSONL (one {"text": ...} per line) or ShareGPT JSON (the human turns of each conversation).</summary>
    public static List<string> ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: prompts file not found");
        string content;
        try
        {
            content = File.ReadAllText(path, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true));
        }
        catch (System.Text.DecoderFallbackException e)
        {
            throw new InvalidDataException($"{path}: not UTF-8 text ({e.Message})", e);
        }
        var texts = new List<string>();
        if (content.TrimStart().StartsWith('['))
        {
            int entry = -1, skipped = 0;
            try
            {
                foreach (var conv in JsonDocument.Parse(content).RootElement.EnumerateArray())
                {
                    entry++;
                    if (conv.ValueKind != JsonValueKind.Object || !conv.TryGetProperty("conversations", out var turns)) { skipped++; continue; }
                    foreach (var turn in turns.EnumerateArray())
                    {
                        if (!turn.TryGetProperty("from", out var from) || !turn.TryGetProperty("value", out var value))
                            throw new InvalidDataException($"{path}: conversation {entry}: a turn without \"from\" and \"value\"");
                        if (from.GetString() is "human" or "user") texts.Add(value.GetString() ?? "");
                    }
                }
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new InvalidDataException($"{path}: not ShareGPT JSON{(entry >= 0 ? $" (conversation {entry})" : "")}: {e.Message}", e);
            }
            if (skipped > 0) Console.Error.WriteLine($"{path}: skipped {skipped} entries without \"conversations\"");
        }
        else
        {
            int line = 0;
            foreach (var raw in content.Split('\n'))
            {
                line++;
                if (raw.Trim().Length == 0) continue;
                JsonElement doc;
                try { doc = JsonDocument.Parse(raw).RootElement; }
                catch (JsonException e) { throw new InvalidDataException($"{path}:{line}: not JSON ({e.Message}); expected JSONL of {{\"text\": ...}} or ShareGPT JSON", e); }
                if (doc.ValueKind != JsonValueKind.Object || !doc.TryGetProperty("text", out var text))
                    throw new InvalidDataException($"{path}:{line}: not an object with a \"text\" field");
                texts.Add(text.ValueKind == JsonValueKind.String ? text.GetString()! : throw new InvalidDataException($"{path}:{line}: \"text\" is not a string"));
            }
        }
        texts.RemoveAll(string.IsNullOrWhiteSpace);
        if (texts.Count == 0) throw new InvalidDataException($"{path}: no prompts");
        return texts;
    }
}

using System.Diagnostics;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Text;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Loading;

/// <summary>
/// Where and how to materialise a model. DType null: the checkpoint's own (config dtype, else bfloat16).
/// Residency null: every expert on <see cref="Device"/>; else the non-resident ones stay in host memory.
/// </summary>
public sealed record LoadOptions(Device Device, ScalarType? DType = null, ExpertResidency? Residency = null);

/// <summary>A model ready to run, with its tokenizer when the directory has one. Owns both.</summary>
public sealed class LoadedModel(string directory, MixtralForCausalLM model, HfTokenizer? tokenizer,
    IReadOnlyList<string> unusedTensors, TimeSpan loadTime) : IDisposable
{
    public string Directory { get; } = directory;
    public MixtralForCausalLM Model { get; } = model;
    public HfTokenizer? Tokenizer { get; } = tokenizer;
    public IReadOnlyList<string> UnusedTensors { get; } = unusedTensors;
    public TimeSpan LoadTime { get; } = loadTime;

    public void Dispose()
    {
        Model.Dispose();
        Tokenizer?.Dispose();
    }
}

/// <summary>Loads a Hugging Face Mixtral directory: config.json, safetensors weights, tokenizer.json.</summary>
public static class ModelLoader
{
    /// <summary>The dtype the config names (<c>dtype</c> or <c>torch_dtype</c>), bfloat16 when it names none.</summary>
    private static ScalarType ConfigDType(MixtralConfig config, string configPath)
    {
        if (config.CheckpointDtype is not { } name) return ScalarType.BFloat16;
        try { return Runtime.TorchRuntime.ParseDType(name); }
        catch (ArgumentException e)
        {
            throw new ModelConfigException($"{configPath}: {e.Message}", e);
        }
    }

    public static LoadedModel Load(string directory, LoadOptions options, IProgress<LoadProgress>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        if (!System.IO.Directory.Exists(directory))
            throw new DirectoryNotFoundException($"model directory {directory} does not exist");
        string configPath = Path.Combine(directory, "config.json");
        var config = MixtralConfig.Load(configPath);
        var dtype = options.DType ?? ConfigDType(config, configPath);
        using var checkpoint = new SafetensorsCheckpoint(directory);
        WeightLoader.CheckConfigAgainst(checkpoint, config, configPath);
        var model = new MixtralForCausalLM(config, dtype, options.Device, options.Residency);
        HfTokenizer? tokenizer = null;
        try
        {
            var unused = WeightLoader.Fill(model, checkpoint, config, progress);
            if (File.Exists(Path.Combine(directory, "tokenizer.json"))) tokenizer = new HfTokenizer(directory);
            if (tokenizer is not null && tokenizer.VocabSize > config.VocabSize)
                throw new ModelConfigException($"{directory}: tokenizer has {tokenizer.VocabSize} tokens but vocab_size is {config.VocabSize}");
            return new LoadedModel(Path.GetFullPath(directory), model, tokenizer, unused, clock.Elapsed);
        }
        catch
        {
            // Page-locked host experts are unregistered before their memory goes; a failure there must not hide the
            // load's own error.
            try { Cuda.HostPinning.Release(model); } catch (Exception) { }
            model.Dispose();
            tokenizer?.Dispose();
            throw;
        }
    }
}

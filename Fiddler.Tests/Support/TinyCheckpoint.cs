using System.Text.Json;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Tests.Support;

/// <summary>Writes a small random Mixtral checkpoint (config.json + model.safetensors) for tests that need one fast.</summary>
public static class TinyCheckpoint
{
    public static MixtralConfig Config(int? slidingWindow = null) => new()
    {
        Architectures = ["MixtralForCausalLM"], ModelType = "mixtral", VocabSize = 96, HiddenSize = 32,
        IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeadsRaw = 2,
        MaxPositionEmbeddings = 128, RmsNormEps = 1e-5, RopeThetaRaw = 10000, NumLocalExperts = 4,
        NumExpertsPerTok = 2, SlidingWindow = slidingWindow, TorchDtype = "float32",
    };

    public static string Write(string dir, MixtralConfig config, int seed = 1,
        Func<string, bool>? skip = null, Func<string, long[], long[]>? reshape = null)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(config));
        using var meta = new MixtralForCausalLM(config, ScalarType.Float32, META);
        var gen = new TorchSharp.torch.Generator((ulong)seed);
        var tensors = new List<(string, SafetensorsDType, long[], ReadOnlyMemory<byte>)>();
        foreach (var (name, p) in meta.named_parameters())
        {
            if (skip?.Invoke(name) == true) continue;
            long[] shape = reshape?.Invoke(name, p.shape) ?? p.shape;
            using var t = name.EndsWith("norm.weight") ? ones(shape) + 0.1f * randn(shape, generator: gen) : 0.2f * randn(shape, generator: gen);
            tensors.Add((name, SafetensorsDType.F32, shape, t.bytes.ToArray()));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        return dir;
    }

    public static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "fiddler-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}

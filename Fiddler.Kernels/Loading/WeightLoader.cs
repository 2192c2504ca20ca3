using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Loading;

/// <summary>Bytes copied so far out of the total, for progress bars.</summary>
public sealed record LoadProgress(long BytesDone, long BytesTotal, string Tensor);

/// <summary>A checkpoint that does not fit the model: missing tensors, wrong shapes, unsupported dtypes.</summary>
public sealed class CheckpointMismatchException(string message) : Exception(message);

/// <summary>
/// Fills every parameter of a module tree from a safetensors checkpoint through <see cref="WeightMap"/>:
/// resolve all sources and check shapes and dtypes first (so a bad checkpoint fails before any copy), then copy.
/// </summary>
public static class WeightLoader
{
    private static readonly HashSet<SafetensorsDType> FloatTypes = [SafetensorsDType.BF16, SafetensorsDType.F16, SafetensorsDType.F32];

    /// <summary>
    /// Compares config.json with the checkpoint's header before the model is built (building allocates every weight):
    /// the layer count and the embedding's shape. A config that asks for far more than the checkpoint holds (e.g.
    /// 2,000,000 layers) fails here in one line, not after allocating for minutes.
    /// </summary>
    public static void CheckConfigAgainst(SafetensorsCheckpoint checkpoint, MixtralConfig config, string configPath)
    {
        long layers = checkpoint.Names.Select(WeightMap.LayerOf).Max() is long top ? top + 1 : 0;
        if (layers != config.NumHiddenLayers)
            throw new CheckpointMismatchException($"{configPath}: num_hidden_layers is {config.NumHiddenLayers}, but the checkpoint in " +
                $"{checkpoint.Directory} has {(layers == 0 ? "no layers" : $"layers 0..{layers - 1}")}");
        const string embed = "model.embed_tokens.weight";
        if (checkpoint.Contains(embed) && checkpoint.Info(embed).Shape is var shape
            && !shape.SequenceEqual(new long[] { config.VocabSize, config.HiddenSize }))
            throw new CheckpointMismatchException($"{configPath}: vocab_size {config.VocabSize} and hidden_size {config.HiddenSize} need " +
                $"'{embed}' of shape {TensorInfo.FormatShape([config.VocabSize, config.HiddenSize])}, but the checkpoint's has {TensorInfo.FormatShape(shape)}");
    }

    /// <returns>Checkpoint tensors that no parameter used (reported, not fatal).</returns>
    public static IReadOnlyList<string> Fill(nn.Module model, SafetensorsCheckpoint checkpoint, MixtralConfig config,
        IProgress<LoadProgress>? progress = null)
    {
        var plan = Plan(model, checkpoint, config);
        long total = plan.Sum(p => p.Bytes), done = 0;
        using (no_grad())
        {
            foreach (var p in plan)
            {
                Copy(checkpoint, p);
                done += p.Bytes;
                progress?.Report(new LoadProgress(done, total, p.Parameter));
            }
        }
        var used = plan.Select(p => p.Source.Name).ToHashSet();
        return checkpoint.Names.Where(n => !used.Contains(n) && !WeightMap.IsIgnorable(n)).Order().ToList();
    }

    private sealed record Step(string Parameter, Tensor Target, WeightSource Source, TensorInfo Info, long ByteOffset, long Bytes);

    private static List<Step> Plan(nn.Module model, SafetensorsCheckpoint checkpoint, MixtralConfig config)
    {
        var steps = new List<Step>();
        var missing = new List<string>();
        foreach (var (name, parameter) in model.named_parameters())
        {
            var source = WeightMap.Candidates(name, config).FirstOrDefault(s => checkpoint.Contains(s.Name));
            if (source is null) { missing.Add(name); continue; }
            var info = checkpoint.Info(source.Name);
            if (!FloatTypes.Contains(info.DType))
                throw new CheckpointMismatchException($"{checkpoint.Directory}: tensor '{info.Name}' has dtype {info.DType}; weights must be BF16, F16 or F32");
            var (shape, offset) = Slice(checkpoint, info, source);
            if (!shape.SequenceEqual(parameter.shape))
                throw new CheckpointMismatchException($"{checkpoint.Directory}: tensor '{info.Name}'" +
                    (source.Index is null ? "" : $" (slab {source.Index}, rows {source.RowStart}..)") +
                    $" has shape {TensorInfo.FormatShape(shape)}, but '{name}' needs {TensorInfo.FormatShape(parameter.shape)} (check config.json)");
            long bytes = shape.Aggregate(1L, (a, b) => a * b) * info.DType.ElementSize();
            steps.Add(new Step(name, parameter, source, info, offset, bytes));
        }
        if (missing.Count > 0)
            throw new CheckpointMismatchException($"{checkpoint.Directory}: {missing.Count} weight(s) missing from the checkpoint, " +
                $"first: {string.Join(", ", missing.Take(5))}");
        // Weights of a layer or an expert the config does not have: the config describes a smaller model than these
        // weights, and running it would silently give another model's output.
        var used = steps.Select(p => p.Source.Name).ToHashSet();
        foreach (string n in checkpoint.Names.Where(n => !used.Contains(n) && !WeightMap.IsIgnorable(n)).Order())
        {
            if (WeightMap.LayerOf(n) is long layer && layer >= config.NumHiddenLayers)
                throw new CheckpointMismatchException($"{checkpoint.Directory}: tensor '{n}' is for layer {layer}, but config.json's " +
                    $"num_hidden_layers is {config.NumHiddenLayers} (check config.json)");
            if (WeightMap.ExpertOf(n) is long expert && expert >= config.NumLocalExperts)
                throw new CheckpointMismatchException($"{checkpoint.Directory}: tensor '{n}' is for expert {expert}, but config.json's " +
                    $"num_local_experts is {config.NumLocalExperts} (check config.json)");
        }
        return steps;
    }

    /// <summary>Shape and byte offset (from the tensor's start) of the slice a source names.</summary>
    private static (long[] Shape, long Offset) Slice(SafetensorsCheckpoint checkpoint, TensorInfo info, WeightSource s)
    {
        if (s.Index is not long index) return (info.Shape, 0);
        var shape = info.Shape;
        if (shape.Length < 2 || index >= shape[0] || (s.Leading is { } lead && !shape.Take(lead.Length).SequenceEqual(lead))
            || s.RowStart + (s.RowCount ?? shape[1]) > shape[1])
            throw new CheckpointMismatchException($"{checkpoint.Directory}: fused tensor '{info.Name}' has shape {TensorInfo.FormatShape(shape)}, " +
                $"but slab {index}{(s.RowCount is { } n ? $", rows {s.RowStart}..{s.RowStart + n - 1}," : "")} was needed" +
                (s.Leading is { } l ? $" from a tensor of shape [{string.Join(", ", l)}, …]" : "") + " (check config.json)");
        long rows = s.RowCount ?? shape[1];
        long rowElems = shape.Skip(2).Aggregate(1L, (a, b) => a * b);
        long offset = (index * shape[1] + s.RowStart) * rowElems * info.DType.ElementSize();
        return ([rows, .. shape[2..]], offset);
    }

    private static unsafe void Copy(SafetensorsCheckpoint checkpoint, Step s)
    {
        byte* src = checkpoint.GetPointer(s.Info.Name) + s.ByteOffset;
        var srcType = s.Info.DType.ToScalarType();
        if (s.Target.device_type == DeviceType.CPU && s.Target.dtype == srcType && s.Target.is_contiguous())
        {
            Buffer.MemoryCopy(src, (void*)TensorMemory.DataPtr(s.Target), s.Bytes, s.Bytes);
            return;
        }
        using var staging = empty(s.Target.shape, srcType, CPU);
        Buffer.MemoryCopy(src, (void*)TensorMemory.DataPtr(staging), s.Bytes, s.Bytes);
        s.Target.copy_(staging); // converts dtype and moves to the target device
    }
}

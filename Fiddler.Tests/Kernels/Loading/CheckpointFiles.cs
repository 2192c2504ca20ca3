using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;

namespace Fiddler.Tests.Kernels.Loading;

/// <summary>One tensor of a checkpoint, held in memory so tests can rewrite checkpoints in other layouts.</summary>
internal sealed record RawTensor(string Name, SafetensorsDType DType, long[] Shape, byte[] Data);

/// <summary>Reads and rewrites the checkpoints <see cref="Support.TinyCheckpoint"/> makes, byte for byte.</summary>
internal static class CheckpointFiles
{
    public static List<RawTensor> Read(string dir)
    {
        using var checkpoint = new SafetensorsCheckpoint(dir);
        return checkpoint.Names.Order(StringComparer.Ordinal).Select(n =>
        {
            var info = checkpoint.Info(n);
            return new RawTensor(n, info.DType, info.Shape.ToArray(), checkpoint.GetBytes(n).ToArray());
        }).ToList();
    }

    public static void Write(string path, IEnumerable<RawTensor> tensors) =>
        SafetensorsWriter.Write(path, tensors.Select(t => (t.Name, t.DType, t.Shape, (ReadOnlyMemory<byte>)t.Data)));

    /// <summary>
    /// The transformers-5 fused layout of per-expert tensors: <c>mlp.experts.gate_up_proj</c> [E, 2I, H] (w1 = gate
    /// rows first, then w3 = up), <c>mlp.experts.down_proj</c> [E, H, I] (w2), <c>mlp.gate.weight</c> (router).
    /// With <paramref name="upFirst"/> the halves are swapped (a deliberately wrong layout).
    /// </summary>
    public static List<RawTensor> ToFused(IReadOnlyList<RawTensor> perExpert, MixtralConfig c, bool upFirst = false)
    {
        var byName = perExpert.ToDictionary(t => t.Name);
        var result = perExpert.Where(t => !t.Name.Contains(".block_sparse_moe.", StringComparison.Ordinal)).ToList();
        int experts = c.NumLocalExperts, inter = c.IntermediateSize, hidden = c.HiddenSize;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string src = $"model.layers.{l}.block_sparse_moe.", dst = $"model.layers.{l}.mlp.";
            var gateUp = new List<byte>();
            var down = new List<byte>();
            for (int e = 0; e < experts; e++)
            {
                var w1 = byName[$"{src}experts.{e}.w1.weight"];
                var w3 = byName[$"{src}experts.{e}.w3.weight"];
                var w2 = byName[$"{src}experts.{e}.w2.weight"];
                if (!w1.Shape.SequenceEqual([inter, hidden]) || !w2.Shape.SequenceEqual([hidden, inter]))
                    throw new InvalidOperationException("unexpected per-expert shapes");
                gateUp.AddRange(upFirst ? w3.Data : w1.Data);
                gateUp.AddRange(upFirst ? w1.Data : w3.Data);
                down.AddRange(w2.Data);
            }
            var dtype = byName[$"{src}experts.0.w1.weight"].DType;
            result.Add(new RawTensor(dst + "experts.gate_up_proj", dtype, [experts, 2L * inter, hidden], gateUp.ToArray()));
            result.Add(new RawTensor(dst + "experts.down_proj", dtype, [experts, hidden, inter], down.ToArray()));
            var router = byName[src + "gate.weight"];
            result.Add(router with { Name = dst + "gate.weight" });
        }
        return result;
    }
}

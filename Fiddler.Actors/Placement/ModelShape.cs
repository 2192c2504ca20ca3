using System.Security.Cryptography;
using System.Text;
using Fiddler.Kernels.Config;

namespace Fiddler.Actors.Placement;

/// <summary>
/// The sizes of a Mixtral model that placement and latency calibration need, without any tensors.
/// Byte counts follow the HF parameter list of <c>MixtralForCausalLM</c> (no biases anywhere).
/// </summary>
public sealed record ModelShape(
    int Layers, int Experts, int Hidden, int Intermediate, int Vocab,
    int Heads, int KvHeads, int HeadDim, int BytesPerElement, bool TieEmbeddings)
{
    /// <summary>One expert's SwiGLU weights: w1 (gate) [I,H], w3 (up) [I,H], w2 (down) [H,I].</summary>
    public long ExpertBytes => 3L * Hidden * Intermediate * BytesPerElement;

    /// <summary>All experts of all layers.</summary>
    public long AllExpertsBytes => (long)Layers * Experts * ExpertBytes;

    /// <summary>
    /// Everything that is not an expert: embeddings, lm_head (unless tied), per layer q/k/v/o, the two RMSNorms and
    /// the router gate [E,H], and the final norm. These always live on the GPU.
    /// </summary>
    public long NonExpertBytes
    {
        get
        {
            long embeddings = (long)Vocab * Hidden * (TieEmbeddings ? 1 : 2);
            long attention = (long)Hidden * Heads * HeadDim * 2 + (long)Hidden * KvHeads * HeadDim * 2;
            long perLayer = attention + 2L * Hidden + (long)Experts * Hidden;
            return (embeddings + Layers * perLayer + Hidden) * BytesPerElement;
        }
    }

    /// <summary>Bytes of a preallocated KV cache (K and V, every layer) for <paramref name="tokens"/> positions.</summary>
    public long KvCacheBytes(long tokens, int batch = 1) =>
        2L * Layers * KvHeads * HeadDim * tokens * batch * BytesPerElement;

    /// <summary>
    /// GPU memory kept free for one forward's transient tensors when up to <paramref name="tokens"/> tokens run at once
    /// (a whole prompt) against as many cached positions. Per token: the hidden-state temporaries (residual, norm input
    /// and output, the MoE's gathered rows and outputs; fp32 inside the norms: 32·H bytes), one expert's SwiGLU
    /// intermediates (fused gate/up output, activation, product: 4·I elements) and the K/V a prefill repeats over the
    /// query heads (2·heads·head dim elements); plus <see cref="AttentionBytesPerTokenSquared"/>·tokens² for the mask
    /// and attention's temporaries, and <see cref="RuntimeReserveBytes"/> (half the non-expert weights when that is
    /// less: a toy model's budget). Mixtral-8x7B: 0.62 GB for 544 tokens (the bench's context), 0.73 GB for 900,
    /// 1.95 GB for 4096.
    /// </summary>
    /// <param name="sequences">Sequences run together (beams: a beam search's prompt runs once per beam); they share
    /// one mask.</param>
    public long ActivationReserveBytes(long tokens, int sequences = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequences, 1);
        long perToken = 32L * Hidden + 4L * Intermediate * BytesPerElement + 2L * Heads * HeadDim * BytesPerElement;
        return sequences * tokens * perToken + AttentionBytesPerTokenSquared * tokens * tokens + Math.Min(RuntimeReserveBytes, NonExpertBytes / 2);
    }

    /// <summary>
    /// The part of a prefill's transient memory that grows with the prompt's square: the boolean causal mask (1 byte),
    /// the additive mask attention makes of it, and what the allocator keeps of them. Fitted on the H100 host
    /// (2026-11-27, 24 GiB budget, growable segments): the process held 0.08 GiB more than a linear reserve at 2048
    /// tokens and 0.30 GiB more at 4096, i.e. ~19 bytes per token²; rounded up.
    /// </summary>
    public const long AttentionBytesPerTokenSquared = 24;

    /// <summary>
    /// What the process holds on the GPU beyond its planned tensors and the CUDA context: cuBLAS workspaces, kernels
    /// loaded on first use, the caching allocator's unused blocks. On the H100 host it held 0.32 GiB of that at a 24 GiB
    /// budget with 544 positions (24.83 GiB in use, 0.51 GiB before the model was built; 2026-11-27), when the reserve
    /// had 64 MiB for it; this keeps the budget covering everything but the context.
    /// </summary>
    public const long RuntimeReserveBytes = 448L << 20;

    /// <summary>
    /// A short stable hash of every field, for keying calibration caches: two shapes share it only when all sizes and
    /// the element width agree.
    /// </summary>
    public string Fingerprint
    {
        get
        {
            string canonical = $"L{Layers}/E{Experts}/H{Hidden}/I{Intermediate}/V{Vocab}/h{Heads}/kv{KvHeads}/" +
                               $"d{HeadDim}/b{BytesPerElement}/t{(TieEmbeddings ? 1 : 0)}";
            return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(canonical)))[..16];
        }
    }

    /// <summary>The shape of <paramref name="config"/> stored with <paramref name="bytesPerElement"/> bytes per weight.</summary>
    public static ModelShape From(MixtralConfig config, int bytesPerElement)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (bytesPerElement is not (1 or 2 or 4 or 8))
            throw new ArgumentException($"bytes per element must be 1, 2, 4 or 8, got {bytesPerElement}", nameof(bytesPerElement));
        return new ModelShape(config.NumHiddenLayers, config.NumLocalExperts, config.HiddenSize, config.IntermediateSize,
            config.VocabSize, config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim, bytesPerElement,
            config.TieWordEmbeddings);
    }
}

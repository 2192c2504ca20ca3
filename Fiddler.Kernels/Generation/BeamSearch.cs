using Fiddler.Kernels.Modules;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Generation;

// W=beams V=vocabulary

/// <summary>One finished beam: its new tokens, cumulative log-probability, and length-normalised score.</summary>
public sealed record BeamHypothesis(int[] Tokens, double LogProb, double Score);

/// <summary>
/// Beam search as Hugging Face's (num_beams=W, length_penalty=1): all W beams advance in one batched forward (the
/// MoE router sees W tokens per step), each step keeps the W best continuations over all beams (2W candidates per
/// beam), and the KV cache rows are reordered to follow their beams. A beam that chooses EOS is finished; the result
/// is sorted by log-probability / generated length. This equals transformers' beam search, without EOS
/// (Fiddler.Tests/Fixtures/*/beam.json) and with EOS tokens that finish hypotheses early (*/beam_eos.json).
/// </summary>
public sealed class BeamSearch(MixtralForCausalLM model)
{
    public IReadOnlyList<BeamHypothesis> Run(IReadOnlyList<int> prompt, int beams, int maxNewTokens, IReadOnlySet<int>? eos = null,
        CancellationToken cancel = default)
    {
        if (beams is < 1 or > 32) throw new GenerationRequestException($"beam width must be in 1..32, got {beams}");
        var options = new GenerationOptions { MaxNewTokens = maxNewTokens };
        options.Validate();
        new Generator(model, null).Check(prompt, options, sequences: beams);
        cancel.ThrowIfCancellationRequested();
        eos ??= new HashSet<int>();
        using var scope = NewDisposeScope(); // the per-step temporaries; the cache and results own nothing in it
        using var noGrad = no_grad();
        using var cache = model.NewCache(prompt.Count + maxNewTokens, beams);
        var live = new List<(double LogProb, List<int> Tokens)> { (0, []) };
        var finished = new List<BeamHypothesis>();

        long[] promptIds = prompt.Select(i => (long)i).ToArray();
        var logits = Step(tensor(promptIds).unsqueeze(0).expand(beams, promptIds.Length).contiguous(), cache, cancel); // [W, V]
        for (int step = 0; step < maxNewTokens && live.Count > 0; step++)
        {
            var candidates = new List<(double LogProb, int Beam, int Rank, int Token)>();
            for (int b = 0; b < live.Count; b++)
            {
                var (values, ids) = TopK(logits, b, 2 * beams);
                for (int r = 0; r < values.Length; r++) candidates.Add((live[b].LogProb + values[r], b, r, ids[r]));
            }
            candidates.Sort((x, y) => y.LogProb != x.LogProb ? y.LogProb.CompareTo(x.LogProb) : x.Beam != y.Beam ? x.Beam - y.Beam : x.Rank - y.Rank);

            var next = new List<(double, List<int>)>();
            var rows = new List<long>();
            var tokens = new List<long>();
            for (int i = 0; i < candidates.Count && next.Count < beams; i++)
            {
                var c = candidates[i];
                var sequence = new List<int>(live[c.Beam].Tokens) { c.Token };
                if (eos.Contains(c.Token))
                {
                    // As HF: an EOS among the best W candidates finishes a hypothesis; it does not take a beam's place.
                    if (i < beams) finished.Add(new BeamHypothesis([.. sequence], c.LogProb, c.LogProb / sequence.Count));
                    continue;
                }
                next.Add((c.LogProb, sequence));
                rows.Add(c.Beam);
                tokens.Add(c.Token);
            }
            logits.Dispose();
            live = next;
            if (step + 1 == maxNewTokens || live.Count == 0 || Done(finished, live, beams)) break;
            while (rows.Count < beams) { rows.Add(rows[0]); tokens.Add(tokens[0]); } // keep the batch full
            using (var order = tensor(rows.ToArray())) cache.Reorder(order);
            cancel.ThrowIfCancellationRequested(); // cut-short beams must not pass for finished ones
            logits = Step(tensor(tokens.ToArray()).unsqueeze(1), cache, cancel);
        }
        return finished.Concat(live.Select(l => new BeamHypothesis([.. l.Tokens], l.LogProb, l.LogProb / Math.Max(1, l.Tokens.Count))))
            .OrderByDescending(h => h.Score).Take(beams).ToList();
    }

    /// <summary>HF's default (early_stopping=False) heuristic: stop once W hypotheses are finished and the best live beam
    /// cannot beat the worst of them at its current length.</summary>
    private static bool Done(List<BeamHypothesis> finished, List<(double LogProb, List<int> Tokens)> live, int beams) =>
        finished.Count >= beams && live.Max(l => l.LogProb / l.Tokens.Count) <= finished.OrderByDescending(h => h.Score).Take(beams).Min(h => h.Score);

    /// <summary>One forward's log-probabilities on the host; throws <see cref="OperationCanceledException"/> when
    /// <paramref name="cancel"/> fires before one of its layers (a long prompt stops between layers).</summary>
    private Tensor Step(Tensor ids, Cache.KvCache cache, CancellationToken cancel)
    {
        using (ids)
        using (var l = model.Forward(ids, cache, allPositions: false, stop: cancel.CanBeCanceled ? () => cancel.IsCancellationRequested : null))
        {
            if (l is null) throw new OperationCanceledException(cancel);
            return l.log_softmax(-1).cpu();                                         // [W, V] fp32
        }
    }

    private static (double[] Values, int[] Ids) TopK(Tensor logProbs, int row, int k)
    {
        using var r = logProbs[row];
        var (v, i) = r.topk(Math.Min(k, (int)logProbs.size(1)));
        using (v) using (i)
            return (v.data<float>().Select(x => (double)x).ToArray(), i.data<long>().Select(x => (int)x).ToArray());
    }
}

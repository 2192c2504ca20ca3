#!/usr/bin/env python3
"""Beam-search references for the fixture models (run on a host with transformers 5.17; no network needed).

For every fixture model under --fixtures (folders with reference.json), for each of its prompts, records in
<model>/beam.json:
  - hf_sequences / hf_scores: transformers' model.generate(num_beams=W, do_sample=False, EOS disabled,
    max_new_tokens=min_new_tokens=N, num_return_sequences=W, length_penalty=1.0), fp32, eager attention;
  - manual_sequences / manual_scores: a textbook beam search over full recomputes (no KV cache), for diagnosis.
Usage: python make_beam_fixtures.py --fixtures Fiddler.Tests/Fixtures [--beams 3] [--new-tokens 12]
"""
import argparse
import copy
import json
import os
import sys


def load(path):
    import torch
    from transformers import MixtralForCausalLM
    last = None
    for kwargs in ({"dtype": torch.float32}, {"torch_dtype": torch.float32}):
        try:
            m = MixtralForCausalLM.from_pretrained(path, attn_implementation="eager", local_files_only=True, **kwargs)
            return m.eval()
        except TypeError as e:  # noqa: PERF203
            last = e
    raise last


def hf_beams(model, prompt, w, n):
    import torch
    gc = copy.deepcopy(model.generation_config)
    for k, v in dict(do_sample=False, num_beams=w, num_return_sequences=w, max_new_tokens=n, min_new_tokens=n,
                     eos_token_id=None, pad_token_id=0, bos_token_id=1, length_penalty=1.0, early_stopping=False,
                     output_scores=True, return_dict_in_generate=True, temperature=None, top_p=None, top_k=None).items():
        try:
            setattr(gc, k, v)
        except Exception as e:  # noqa: BLE001
            print(f"  generation_config.{k}: {e!r}", file=sys.stderr)
    x = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    seqs = [s[len(prompt):].tolist() for s in out.sequences]
    scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
    return seqs, scores


def manual_beams(model, prompt, w, n):
    import torch
    beams = [(0.0, list(prompt))]
    with torch.no_grad():
        for _ in range(n):
            cands = []
            for b, (score, seq) in enumerate(beams):
                logits = model(torch.tensor([seq])).logits[0, -1].float()
                logp = torch.log_softmax(logits, -1)
                v, i = torch.topk(logp, 2 * w)
                for r, (vv, ii) in enumerate(zip(v.tolist(), i.tolist())):
                    cands.append((score + vv, b, r, seq + [ii]))
            cands.sort(key=lambda c: (-c[0], c[1], c[2]))
            beams = [(c[0], c[3]) for c in cands[:w]]
    return [s[len(prompt):] for _, s in beams], [sc for sc, _ in beams]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=12)
    a = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    for name in sorted(os.listdir(a.fixtures)):
        d = os.path.join(a.fixtures, name)
        ref = os.path.join(d, "reference.json")
        if not os.path.isfile(ref):
            continue
        prompts = [p["prompt_ids"] for p in json.load(open(ref))["prompts"]]
        model = load(d)
        out = {"num_beams": a.beams, "new_tokens": a.new_tokens, "length_penalty": 1.0, "eos": None,
               "transformers": transformers.__version__, "torch": torch.__version__, "prompts": []}
        for p in prompts:
            entry = {"prompt_ids": p}
            try:
                entry["hf_sequences"], entry["hf_scores"] = hf_beams(model, p, a.beams, a.new_tokens)
            except Exception as e:  # noqa: BLE001
                entry["hf_error"] = repr(e)
            entry["manual_sequences"], entry["manual_scores"] = manual_beams(model, p, a.beams, a.new_tokens)
            entry["hf_equals_manual"] = entry.get("hf_sequences") == entry["manual_sequences"]
            out["prompts"].append(entry)
            print(f"{name}: hf={entry.get('hf_sequences', entry.get('hf_error'))}\n   manual={entry['manual_sequences']}"
                  f" equal={entry['hf_equals_manual']}")
        json.dump(out, open(os.path.join(d, "beam.json"), "w"), indent=1)


if __name__ == "__main__":
    main()

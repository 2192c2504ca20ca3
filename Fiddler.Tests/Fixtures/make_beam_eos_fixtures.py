#!/usr/bin/env python3
"""Beam-search references WITH an end-of-sequence token (run on a host with transformers 5.17; no network needed).

beam.json pins beam search with EOS disabled. Here, per fixture prompt, two tokens that the EOS-free beams choose
(step 3 of the third beam, step 5 of the best) are declared EOS in turn, so hypotheses finish early and compete with
live beams by length-normalised score. Records transformers' model.generate(num_beams=3, do_sample=False,
eos_token_id=E, max_new_tokens=12, num_return_sequences=3, length_penalty=1.0, early_stopping=False), fp32, eager
attention: new tokens up to and including EOS (padding dropped) and sequences_scores.
Writes <out>/<model>/beam_eos.json. Usage: python make_beam_eos_fixtures.py --fixtures Fiddler.Tests/Fixtures --out DIR
"""
import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_beam_fixtures import load  # noqa: E402


def hf_beams_eos(model, prompt, w, n, eos, pad):
    import torch
    gc = copy.deepcopy(model.generation_config)
    for k, v in dict(do_sample=False, num_beams=w, num_return_sequences=w, max_new_tokens=n, min_new_tokens=0,
                     eos_token_id=eos, pad_token_id=pad, bos_token_id=1, length_penalty=1.0, early_stopping=False,
                     output_scores=True, return_dict_in_generate=True, temperature=None, top_p=None, top_k=None).items():
        try:
            setattr(gc, k, v)
        except Exception as e:  # noqa: BLE001
            print(f"  generation_config.{k}: {e!r}", file=sys.stderr)
    x = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    seqs = []
    for s in out.sequences:
        new = s[len(prompt):].tolist()
        if eos in new:
            new = new[: new.index(eos) + 1]
        seqs.append(new)
    return seqs, out.sequences_scores.tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    for name in sorted(os.listdir(a.fixtures)):
        d = os.path.join(a.fixtures, name)
        beam = os.path.join(d, "beam.json")
        if not os.path.isfile(beam):
            continue
        ref = json.load(open(beam))
        w, n = ref["num_beams"], ref["new_tokens"]
        model = load(d)
        out = {"num_beams": w, "new_tokens": n, "length_penalty": 1.0, "early_stopping": False,
               "transformers": transformers.__version__, "torch": torch.__version__, "cases": []}
        for p in ref["prompts"]:
            free = p["hf_sequences"]
            for eos in dict.fromkeys([free[2][2], free[0][4]]):
                pad = 0 if eos != 0 else 2
                case = {"prompt_ids": p["prompt_ids"], "eos": eos, "pad": pad}
                try:
                    case["hf_sequences"], case["hf_scores"] = hf_beams_eos(model, p["prompt_ids"], w, n, eos, pad)
                except Exception as e:  # noqa: BLE001
                    case["hf_error"] = repr(e)
                out["cases"].append(case)
                print(f"{name} eos={eos}: {case.get('hf_sequences', case.get('hf_error'))} {case.get('hf_scores')}")
        os.makedirs(os.path.join(a.out, name), exist_ok=True)
        json.dump(out, open(os.path.join(a.out, name, "beam_eos.json"), "w"), indent=1)


if __name__ == "__main__":
    main()

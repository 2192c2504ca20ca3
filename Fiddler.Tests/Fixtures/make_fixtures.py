#!/usr/bin/env python3
"""Reference fixtures for Fiddler.NET's parity tests, made with Hugging Face transformers.

Usage (on the GPU machine, no network needed):

    /opt/torch/.venv/bin/python Fiddler.Tests/Fixtures/make_fixtures.py \
        --out Fiddler.Tests/Fixtures [--device cuda|cpu] [--tokenizer Fiddler.Host/DefaultModel/model]

What it writes into --out:

  <name>/config.json, generation_config.json, model.safetensors
      A tiny random MixtralForCausalLM saved with save_pretrained in float32. The configs differ in GQA ratio,
      experts per token, number of experts, sliding window, rope theta, rms eps, head_dim, intermediate size,
      number of layers, config.json style (transformers-5 `rope_parameters`/`dtype` vs Hub `rope_theta`/
      `torch_dtype`) and checkpoint layout (Hub per-expert `block_sparse_moe.experts.{e}.w1/w2/w3` vs
      transformers-5 fused `mlp.experts.gate_up_proj/down_proj`).
  <name>/reference.safetensors   (tensor names as read by Fiddler.Kernels/Verification/FixtureParity.cs)
      p{k}.prompt_ids            int64 [T]
      p{k}.prefill_logits        f32   [T, V]   fp32 logits at every prompt position
      p{k}.greedy_tokens         int64 [G]      fp32 greedy continuation (G = 32), EOS ignored
      p{k}.step_logits           f32   [G, V]   logits that chose greedy_tokens[i] (step 0 = last prefill row)
      p{k}.fp32_step_top5        int64 [G, 5]   top-5 ids of step_logits
      p{k}.fp32_step_top5_logits f32   [G, 5]
      p{k}.bf16_greedy_tokens    int64 [G]      greedy continuation of the same checkpoint loaded in bfloat16
                                                 (incremental decoding with a KV cache, as an engine does)
      p{k}.bf16_step_top5        int64 [G, 5]   top-5 ids at each bf16 step (along the bf16 path)
      p{k}.bf16_step_top5_logits f32   [G, 5]
  <name>/reference.json          the same ids/tokens as plain lists, plus metadata and self-checks
  tokenizer_cases.json           (with --tokenizer) [{"text", "ids", "ids_no_special", "decoded", ...}]
  tokenizer_cases.meta.json      (with --tokenizer) versions, decode-only cases, chat-template cases
  tokenizer/                     (with --tokenizer) copy of the tokenizer files the cases were made from
  README.md                      what all of the above is

Semantics the references follow (all checked at run time, see reference.json "checks"):
  * greedy = argmax of the raw logits (no logits processors), EOS is NOT a stop (generation runs G steps).
  * fp32 greedy/step logits come from full recomputation (no KV cache) of the whole sequence at every step;
    they are cross-checked against a KV-cache loop and against model.generate().
  * everything is also recomputed by an independent float64 re-implementation in this file that reads only
    config.json + model.safetensors (as the C# engine does); the max abs difference is recorded.
  * sliding window (HF masking_utils): query i attends to key j iff  i - W < j <= i  (W keys incl. itself).

Exit status is non-zero if a hard self-check fails (e.g. save/reload changes weights).
"""

import argparse
import copy
import datetime
import hashlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import struct
import sys
import traceback

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Fixture model specs. Sizes are kept small so the committed fixtures stay around 3 MB in total.
# Neither `intermediate` nor 2*`intermediate` equals `hidden`, so fused expert tensors can be oriented from their shapes.
# --------------------------------------------------------------------------------------------------------------
VOCAB = 512
HIDDEN = 64
GEN_TOKENS = 32
PROMPT_LENGTHS = (7, 13)

SPECS = [
    dict(
        name="tiny-mha-top1",
        num_attention_heads=4, num_key_value_heads=4, head_dim=None,
        num_experts_per_tok=1, num_local_experts=4,
        num_hidden_layers=2, intermediate_size=56,
        sliding_window=None, rope_theta=1.0e6, rms_norm_eps=1e-5,
        config_style="hf5",          # keep config.json as transformers 5 writes it (rope_parameters, dtype)
        checkpoint_layout="legacy",  # Hub layout: block_sparse_moe.experts.{e}.w1/w2/w3
        seed=1001,
    ),
    dict(
        name="tiny-gqa2-top2-swa8",
        num_attention_heads=4, num_key_value_heads=2, head_dim=None,
        num_experts_per_tok=2, num_local_experts=8,
        num_hidden_layers=2, intermediate_size=24,
        sliding_window=8, rope_theta=1.0e4, rms_norm_eps=1e-6,
        config_style="hf5",
        checkpoint_layout="fused",   # transformers-5 layout: mlp.experts.gate_up_proj [E,2I,H], down_proj [E,H,I]
        seed=2002,
    ),
    dict(
        name="tiny-gqa4-top3",
        num_attention_heads=8, num_key_value_heads=2, head_dim=8,
        num_experts_per_tok=3, num_local_experts=6,
        num_hidden_layers=3, intermediate_size=40,
        sliding_window=None, rope_theta=5.0e5, rms_norm_eps=1e-5,
        config_style="hub",          # rewrite config.json the way Hub checkpoints look (rope_theta, torch_dtype)
        checkpoint_layout="legacy",
        seed=3003,
    ),
]

INIT_RANGES = (0.1, 0.15, 0.2, 0.3)   # tried in order if greedy output is degenerate
SEEDS_PER_INIT = 4
MIN_DISTINCT_GREEDY = 4               # distinct tokens required in each 32-token greedy continuation
GOOD_MIN_GAP = 2e-3                   # preferred minimum top1-top2 logit gap along the fp32 greedy path

TOKENIZER_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "The meaning of life is",
    "café naïve résumé façade Ångström São Paulo",
    "Größenwahn und Übermut",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji: 😀🎉👍🏽 and flags 🇫🇷🇯🇵",
    "multiple   spaces    here",
    "  leading and trailing  ",
    " ",
    "",
    "line one\nline two\n\nline four\n",
    "tab\tseparated\tvalues\t",
    "Windows\r\nline endings\r\n",
    "1234567890 3.14159 2024-01-01 1,000,000 0x1F",
    "ﬁ ligature, ½ fraction, ™ sign, non-breaking\u00a0space, zero\u200bwidth",
    "[INST] What is 2+2? [/INST]",
    "<s> literal special tokens </s> and <unk>",
    "def f(x):\n    return x * 2  # comment\n",
    "A long paragraph: It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of "
    "Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
    "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
    "direct the other way.",
]


def log(*args):
    print("[make_fixtures]", *args, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Minimal safetensors I/O (numpy only), so the reference file does not depend on the safetensors package API.
# --------------------------------------------------------------------------------------------------------------
_NP_TO_ST = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64",
             np.dtype("int32"): "I32", np.dtype("float16"): "F16", np.dtype("uint8"): "U8"}
_ST_TO_NP = {v: k for k, v in _NP_TO_ST.items()}


def write_safetensors(path, tensors, metadata=None):
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NP_TO_ST:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NP_TO_ST[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n).decode("utf-8")), 8 + n


def read_safetensors_numpy(path):
    """Reads F32/F64/I64/I32/F16/U8 and BF16 (widened to float32) tensors."""
    header, base = read_safetensors_header(path)
    out = {}
    with open(path, "rb") as f:
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[base + s: base + e]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_ST_TO_NP[info["dtype"]].newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).copy()
    return out


# --------------------------------------------------------------------------------------------------------------
# Checkpoint layout helpers (Hub per-expert layout <-> transformers-5 fused layout).
# --------------------------------------------------------------------------------------------------------------
_FUSED_GU = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.gate_up_proj$")
_FUSED_DN = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.down_proj$")
_FUSED_GATE = re.compile(r"^(model\.layers\.\d+)\.mlp\.gate\.weight$")
_LEGACY_EXPERT = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_LEGACY_GATE = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.gate\.weight$")


def classify_layout(keys):
    keys = list(keys)
    legacy = any(_LEGACY_EXPERT.match(k) for k in keys)
    fused = any(_FUSED_GU.match(k) or _FUSED_DN.match(k) for k in keys)
    if legacy and not fused:
        return "legacy"
    if fused and not legacy:
        return "fused"
    return "mixed" if (legacy and fused) else "unknown"


def fused_to_legacy(sd, hidden, inter, n_exp):
    """sd: name -> array-like with .shape and slicing (numpy or torch). Orientation is taken from the shapes."""
    out = {}
    for k, v in sd.items():
        m = _FUSED_GU.match(k)
        if m:
            shp = tuple(v.shape)
            if shp == (n_exp, 2 * inter, hidden):
                g, u = v[:, :inter, :], v[:, inter:, :]
            elif shp == (n_exp, hidden, 2 * inter):
                g, u = _swap12(v[:, :, :inter]), _swap12(v[:, :, inter:])
            else:
                raise ValueError(f"{k}: unexpected shape {shp} (E={n_exp}, H={hidden}, I={inter})")
            for e in range(n_exp):
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w1.weight"] = _contig(g[e])
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w3.weight"] = _contig(u[e])
            continue
        m = _FUSED_DN.match(k)
        if m:
            shp = tuple(v.shape)
            if shp == (n_exp, hidden, inter):
                d = v
            elif shp == (n_exp, inter, hidden):
                d = _swap12(v)
            else:
                raise ValueError(f"{k}: unexpected shape {shp} (E={n_exp}, H={hidden}, I={inter})")
            for e in range(n_exp):
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w2.weight"] = _contig(d[e])
            continue
        m = _FUSED_GATE.match(k)
        if m:
            out[f"{m.group(1)}.block_sparse_moe.gate.weight"] = v
            continue
        out[k] = v
    return out


def legacy_to_fused(sd, n_exp):
    """Hub layout -> transformers-5 canonical fused layout (gate_up_proj [E, 2I, H] gate rows first, down [E, H, I])."""
    import torch
    out = {}
    per_layer = {}
    for k, v in sd.items():
        m = _LEGACY_EXPERT.match(k)
        if m:
            per_layer.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = v
            continue
        m = _LEGACY_GATE.match(k)
        if m:
            out[f"{m.group(1)}.mlp.gate.weight"] = v
            continue
        out[k] = v
    for prefix, d in per_layer.items():
        gu = torch.stack([torch.cat([d[(e, "w1")], d[(e, "w3")]], dim=0) for e in range(n_exp)], dim=0)
        dn = torch.stack([d[(e, "w2")] for e in range(n_exp)], dim=0)
        out[f"{prefix}.mlp.experts.gate_up_proj"] = gu.contiguous()
        out[f"{prefix}.mlp.experts.down_proj"] = dn.contiguous()
    return out


def _swap12(v):
    if isinstance(v, np.ndarray):
        return np.swapaxes(v, 1, 2)
    return v.transpose(1, 2)


def _contig(v):
    if isinstance(v, np.ndarray):
        return np.ascontiguousarray(v)
    return v.contiguous().clone()  # own storage: safetensors refuses tensors that share memory


# --------------------------------------------------------------------------------------------------------------
# Independent float64 re-implementation of Mixtral (reads config.json + safetensors only, like the C# engine).
# --------------------------------------------------------------------------------------------------------------
def config_json_semantics(cfg_json):
    """What an engine must read from config.json. Accepts both transformers-5 and Hub styles."""
    c = dict(cfg_json)
    heads = int(c["num_attention_heads"])
    kv = c.get("num_key_value_heads")
    kv = heads if kv is None else int(kv)
    hd = c.get("head_dim")
    hd = int(c["hidden_size"]) // heads if hd is None else int(hd)
    rp = c.get("rope_parameters")
    theta = None
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        theta = float(rp["rope_theta"])
    if theta is None and c.get("rope_theta") is not None:
        theta = float(c["rope_theta"])
    if theta is None:
        theta = 1.0e6  # MixtralConfig.default_theta
    sw = c.get("sliding_window")
    return dict(
        vocab=int(c["vocab_size"]), hidden=int(c["hidden_size"]), inter=int(c["intermediate_size"]),
        layers=int(c["num_hidden_layers"]), heads=heads, kv_heads=kv, head_dim=hd,
        eps=float(c.get("rms_norm_eps", 1e-5)), theta=theta, window=None if sw is None else int(sw),
        n_exp=int(c["num_local_experts"]), top_k=int(c["num_experts_per_tok"]),
        tie=bool(c.get("tie_word_embeddings", False)),
    )


def load_checkpoint_as_legacy_f64(model_dir, sem):
    import torch
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors") and f != "reference.safetensors")
    sd = {}
    for f in files:
        sd.update(read_safetensors_numpy(os.path.join(model_dir, f)))
    layout = classify_layout(sd.keys())
    if layout == "fused":
        sd = fused_to_legacy(sd, sem["hidden"], sem["inter"], sem["n_exp"])
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in sd.items()}, layout


def reference_forward_f64(W, sem, ids):
    """Logits [T, V] (float64) of the whole sequence `ids` with a plain causal (+ sliding window) mask."""
    import torch
    T = len(ids)
    nh, nkv, hd = sem["heads"], sem["kv_heads"], sem["head_dim"]
    eps, K = sem["eps"], sem["top_k"]
    ids_t = torch.tensor(ids, dtype=torch.long)
    x = W["model.embed_tokens.weight"][ids_t].clone()

    def rms(v, w):
        return w * (v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps))

    inv = 1.0 / (sem["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]

    def rope(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    qi = torch.arange(T)[:, None]
    kj = torch.arange(T)[None, :]
    allowed = kj <= qi
    if sem["window"] is not None:
        allowed = allowed & (kj > qi - sem["window"])
    rep = nh // nkv
    for layer in range(sem["layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(T, nh, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(T, nkv, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(rep, dim=1)   # query head j uses kv head j // rep (HF repeat_kv)
        v = v.repeat_interleave(rep, dim=1)
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        s = s.masked_fill(~allowed[None], float("-inf"))
        a = torch.softmax(s, dim=-1)
        o = torch.einsum("hqk,khd->qhd", a, v).reshape(T, nh * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        router = h @ W[p + "block_sparse_moe.gate.weight"].T
        probs = torch.softmax(router, dim=-1)
        topv, topi = torch.topk(probs, K, dim=-1)
        topv = topv / topv.sum(-1, keepdim=True)
        moe = torch.zeros_like(x)
        for t in range(T):
            for j in range(K):
                e = int(topi[t, j])
                pe = f"{p}block_sparse_moe.experts.{e}."
                ht = h[t]
                y = torch.nn.functional.silu(W[pe + "w1.weight"] @ ht) * (W[pe + "w3.weight"] @ ht)
                moe[t] += topv[t, j] * (W[pe + "w2.weight"] @ y)
        x = x + moe
    x = rms(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if sem["tie"] and "lm_head.weight" not in W else W["lm_head.weight"]
    return x @ head.T


# --------------------------------------------------------------------------------------------------------------
# transformers helpers (all version-adaptive; every choice is printed)
# --------------------------------------------------------------------------------------------------------------
def effective_theta(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        if rp.get("rope_theta") is not None:
            return float(rp["rope_theta"])
        # per-layer-type dicts (not expected for Mixtral)
        for v in rp.values():
            if isinstance(v, dict) and v.get("rope_theta") is not None:
                return float(v["rope_theta"])
    rt = getattr(cfg, "rope_theta", None)
    return None if rt is None else float(rt)


def build_config(spec, init_range):
    from transformers import MixtralConfig
    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], hidden_act="silu", max_position_embeddings=256,
        initializer_range=init_range, rms_norm_eps=spec["rms_norm_eps"], use_cache=True,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, sliding_window=spec["sliding_window"],
        attention_dropout=0.0, num_experts_per_tok=spec["num_experts_per_tok"],
        num_local_experts=spec["num_local_experts"], output_router_logits=False, router_jitter_noise=0.0,
    )
    if spec.get("head_dim") is not None:
        common["head_dim"] = spec["head_dim"]
    theta = spec["rope_theta"]
    attempts = [
        ("rope_parameters={'rope_type':'default','rope_theta':X}",
         {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}),
        ("rope_theta=X", {"rope_theta": theta}),
    ]
    errors = []
    for label, extra in attempts:
        try:
            cfg = MixtralConfig(**common, **extra)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{label}: {type(e).__name__}: {e}")
            continue
        got = effective_theta(cfg)
        if got is not None and abs(got - theta) <= 1e-9 * theta:
            return cfg, label
        errors.append(f"{label}: constructed, but effective theta is {got!r} (rope_parameters="
                      f"{getattr(cfg, 'rope_parameters', None)!r}, rope_theta={getattr(cfg, 'rope_theta', None)!r})")
    raise RuntimeError("could not build MixtralConfig with the requested rope theta:\n  " + "\n  ".join(errors))


def rotary_theta_from_model(model, head_dim):
    """theta = inv_freq[1] ** (-head_dim / 2); returns a list (one per rotary module found)."""
    out = []
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq") and buf.numel() >= 2:
            inv1 = float(buf.detach().double().cpu()[1])
            out.append((name, inv1 ** (-head_dim / 2.0)))
    return out


def from_pretrained(cls, path, dtype, device):
    base = dict(attn_implementation="eager", local_files_only=True)
    tries = [dict(base, dtype=dtype, experts_implementation="eager"),
             dict(base, dtype=dtype),
             dict(base, torch_dtype=dtype, experts_implementation="eager"),
             dict(base, torch_dtype=dtype)]
    last = None
    for kw in tries:
        try:
            m = cls.from_pretrained(path, **kw)
            used = {k: (str(v) if k in ("dtype", "torch_dtype") else v) for k, v in kw.items()}
            break
        except TypeError as e:
            last = e
            continue
        except ValueError as e:
            # unknown experts_implementation value etc.
            last = e
            continue
    else:
        raise RuntimeError(f"from_pretrained failed for every kwarg combination: {last!r}")
    m = m.to(device)
    m.eval()
    if getattr(m.config, "_experts_implementation", None) not in (None, "eager") and hasattr(m, "set_experts_implementation"):
        try:
            m.set_experts_implementation("eager")
        except Exception as e:  # noqa: BLE001
            log(f"  set_experts_implementation('eager') failed: {e!r}")
    used["_attn_implementation"] = getattr(m.config, "_attn_implementation", None)
    used["_experts_implementation"] = getattr(m.config, "_experts_implementation", None)
    return m, used


def save_pretrained(model, path):
    kw = {}
    params = inspect.signature(model.save_pretrained).parameters
    if "safe_serialization" in params:
        kw["safe_serialization"] = True
    if "max_shard_size" in params:
        kw["max_shard_size"] = "2GB"
    model.save_pretrained(path, **kw)
    return kw


def forward_kwargs_supported(model):
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def full_logits(model, ids, device):
    import torch
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].float().cpu()


def greedy_recompute(model, prompt, n, device):
    import torch
    seq = list(prompt)
    steps = []
    for _ in range(n):
        lg = full_logits(model, seq, device)[-1]
        steps.append(lg)
        seq.append(int(torch.argmax(lg)))
    return seq[len(prompt):], torch.stack(steps)


def greedy_cached(model, prompt, n, device):
    """Incremental decoding with the model's own KV cache, explicit positions (what an engine does)."""
    import torch
    fk = forward_kwargs_supported(model)
    x = torch.tensor([prompt], dtype=torch.long, device=device)
    kw = dict(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
    if "position_ids" in fk:
        kw["position_ids"] = torch.arange(len(prompt), device=device)[None]
    if "cache_position" in fk:
        kw["cache_position"] = torch.arange(len(prompt), device=device)
    out = model(**kw)
    pkv = out.past_key_values
    lg = out.logits[0, -1].float().cpu()
    toks, steps = [], []
    for i in range(n):
        steps.append(lg)
        tok = int(torch.argmax(lg))
        toks.append(tok)
        if i == n - 1:
            break
        pos = len(prompt) + i
        kw = dict(input_ids=torch.tensor([[tok]], dtype=torch.long, device=device), past_key_values=pkv,
                  use_cache=True, attention_mask=torch.ones((1, pos + 1), dtype=torch.long, device=device))
        if "position_ids" in fk:
            kw["position_ids"] = torch.tensor([[pos]], device=device)
        if "cache_position" in fk:
            kw["cache_position"] = torch.tensor([pos], device=device)
        out = model(**kw)
        pkv = out.past_key_values
        lg = out.logits[0, -1].float().cpu()
    return toks, torch.stack(steps)


def greedy_generate(model, prompt, n, device):
    """model.generate(do_sample=False) with EOS disabled; returns (tokens, per-step raw logits or None, notes)."""
    import torch
    notes = []
    gc = copy.deepcopy(model.generation_config)
    settings = dict(do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                    pad_token_id=0, bos_token_id=1, output_logits=True, output_scores=True,
                    return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
    for k, v in settings.items():
        try:
            setattr(gc, k, v)
        except Exception as e:  # noqa: BLE001
            notes.append(f"generation_config.{k}: {e!r}")
    x = torch.tensor([prompt], dtype=torch.long, device=device)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    seq = out.sequences[0, len(prompt):].tolist() if hasattr(out, "sequences") else out[0, len(prompt):].tolist()
    logits = getattr(out, "logits", None)
    source = "logits"
    if logits is None:
        logits = getattr(out, "scores", None)
        source = "scores"
    steps = None
    if logits is not None and len(logits) > 0:
        steps = torch.stack([t[0].float().cpu() for t in logits])
        notes.append(f"per-step tensors from generate output .{source}")
    else:
        notes.append("generate returned no per-step logits/scores")
    return seq, steps, notes


def topk_np(steps, k=5):
    import torch
    v, i = torch.topk(steps, k, dim=-1)
    return i.numpy().astype(np.int64), v.numpy().astype(np.float32)


def min_gap(steps):
    import torch
    v, _ = torch.topk(steps, 2, dim=-1)
    return float((v[:, 0] - v[:, 1]).min())


def perturb_norms(model, gen):
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


def make_prompts(seed):
    rng = np.random.RandomState(seed)
    return [[1] + [int(t) for t in rng.randint(3, VOCAB, size=n - 1)] for n in PROMPT_LENGTHS]


def versions():
    v = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__}
    for mod in ("torch", "transformers", "tokenizers", "safetensors", "accelerate"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def print_modeling_notes():
    """Print what the installed modeling code does about sliding windows / experts (for the record)."""
    notes = {}
    try:
        import transformers.models.mixtral.modeling_mixtral as mm
        src = inspect.getsource(mm)
        lines = [ln.strip() for ln in src.splitlines() if "sliding" in ln.lower()]
        notes["modeling_mixtral_sliding_lines"] = lines[:20]
        log("modeling_mixtral.py lines mentioning 'sliding':")
        for ln in lines[:20]:
            log("   ", ln)
        notes["has_MixtralExperts"] = hasattr(mm, "MixtralExperts")
        notes["has_MixtralBlockSparseTop2MLP"] = hasattr(mm, "MixtralBlockSparseTop2MLP")
    except Exception as e:  # noqa: BLE001
        notes["modeling_source_error"] = repr(e)
    try:
        import transformers.masking_utils as mu
        src = inspect.getsource(mu.sliding_window_overlay)
        notes["sliding_window_overlay"] = src
        log("masking_utils.sliding_window_overlay:\n" + src)
    except Exception as e:  # noqa: BLE001
        notes["masking_utils_error"] = repr(e)
    return notes


# --------------------------------------------------------------------------------------------------------------
# One fixture model
# --------------------------------------------------------------------------------------------------------------
def choose_model(spec, prompts, device):
    """Try (init_range, seed) candidates; prefer non-degenerate greedy output with a clear top1/top2 margin."""
    import torch
    from transformers import MixtralForCausalLM
    best = None
    for init in INIT_RANGES:
        for s in range(SEEDS_PER_INIT):
            seed = spec["seed"] + 100 * s
            cfg, rope_label = build_config(spec, init)
            torch.manual_seed(seed)
            model = MixtralForCausalLM(cfg)
            gen = torch.Generator().manual_seed(seed + 7)
            perturb_norms(model, gen)
            model = model.to(device=device, dtype=torch.float32).eval()
            distinct, gaps = [], []
            with torch.no_grad():
                for p in prompts:
                    toks, steps = greedy_recompute(model, p, GEN_TOKENS, device)
                    distinct.append(len(set(toks)))
                    gaps.append(min_gap(steps))
            ok = min(distinct) >= MIN_DISTINCT_GREEDY
            score = (ok, min(gaps) if ok else min(distinct))
            log(f"  candidate init_range={init} seed={seed}: distinct={distinct} min_gap={min(gaps):.3e} ok={ok}")
            if best is None or score > best[0]:
                best = (score, model, cfg, rope_label, init, seed, distinct, min(gaps))
            else:
                del model
            if ok and min(gaps) >= GOOD_MIN_GAP:
                return best[1:]
    log("  WARNING: no candidate met both criteria; using the best one found")
    return best[1:]


def rewrite_config_hub_style(model_dir):
    path = os.path.join(model_dir, "config.json")
    with open(path, encoding="utf-8") as f:
        original = f.read()
    c = json.loads(original)
    rp = c.pop("rope_parameters", None)
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        c["rope_theta"] = rp["rope_theta"]
        extra = {k: v for k, v in rp.items() if k not in ("rope_theta", "rope_type")}
        if extra:
            raise RuntimeError(f"rope_parameters has extra keys {extra}; refusing to drop them")
    if "dtype" in c and "torch_dtype" not in c:
        c["torch_dtype"] = c.pop("dtype")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    return original


def state_dict_cpu(model):
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def compare_state_dicts(a, b):
    if set(a) != set(b):
        return f"key sets differ: only-a={sorted(set(a) - set(b))[:5]} only-b={sorted(set(b) - set(a))[:5]}"
    for k in a:
        if a[k].shape != b[k].shape:
            return f"{k}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        if not bool((a[k] == b[k]).all()):
            return f"{k}: values differ (max abs {float((a[k] - b[k]).abs().max())})"
    return None


def make_one(spec, out_dir, device, meta_common):
    import torch
    from transformers import MixtralForCausalLM

    name = spec["name"]
    mdir = os.path.join(out_dir, name)
    if os.path.isdir(mdir):
        shutil.rmtree(mdir)
    os.makedirs(mdir)
    log(f"=== {name} ===")
    prompts = make_prompts(spec["seed"])
    model, cfg, rope_label, init, seed, distinct, gap = choose_model(spec, prompts, device)
    log(f"  chosen init_range={init} seed={seed} distinct={distinct} min_gap={gap:.3e}; rope via {rope_label}")
    hd = spec["head_dim"] or HIDDEN // spec["num_attention_heads"]
    checks = {"rope_config_construction": rope_label, "effective_theta_config": effective_theta(cfg),
              "rotary_theta_from_inv_freq": rotary_theta_from_model(model, hd)}
    log(f"  rope: config theta={checks['effective_theta_config']}, from inv_freq={checks['rotary_theta_from_inv_freq']}")
    expected_sd = state_dict_cpu(model)

    # ---- save, then normalise the on-disk layout and config style --------------------------------------------
    kw = save_pretrained(model, mdir)
    checks["save_pretrained_kwargs"] = kw
    st_files = sorted(f for f in os.listdir(mdir) if f.endswith(".safetensors"))
    if st_files != ["model.safetensors"]:
        raise RuntimeError(f"{name}: expected a single model.safetensors, got {st_files} "
                           f"(and {sorted(os.listdir(mdir))})")
    st_path = os.path.join(mdir, "model.safetensors")
    header, _ = read_safetensors_header(st_path)
    saved_keys = [k for k in header if k != "__metadata__"]
    st_meta = header.get("__metadata__", {"format": "pt"})
    layout_written = classify_layout(saved_keys)
    log(f"  save_pretrained wrote layout '{layout_written}' ({len(saved_keys)} tensors), e.g. "
        f"{[k for k in saved_keys if 'layers.0.' in k and ('expert' in k or 'gate' in k)][:4]}")
    checks["layout_written_by_save_pretrained"] = layout_written
    with open(os.path.join(mdir, "config.json"), encoding="utf-8") as f:
        checks["config_json_as_written"] = json.load(f)

    want = spec["checkpoint_layout"]
    if layout_written not in ("legacy", "fused"):
        raise RuntimeError(f"{name}: could not recognise checkpoint layout in {saved_keys[:10]}")
    if layout_written != want:
        import safetensors.torch as st
        sd = st.load_file(st_path)
        if want == "legacy":
            sd = fused_to_legacy(sd, HIDDEN, spec["intermediate_size"], spec["num_local_experts"])
        else:
            sd = legacy_to_fused(sd, spec["num_local_experts"])
        sd = {k: v.contiguous().clone() for k, v in sd.items()}
        st.save_file(sd, st_path, metadata=dict(st_meta))
        log(f"  rewrote model.safetensors from '{layout_written}' to '{want}' layout")
    original_cfg = None
    if spec["config_style"] == "hub":
        original_cfg = rewrite_config_hub_style(mdir)
        log("  rewrote config.json in Hub style (rope_theta, torch_dtype)")

    # ---- reload from disk exactly as a user would; weights must be bit-identical ------------------------------
    m32, used32 = from_pretrained(MixtralForCausalLM, mdir, torch.float32, device)
    diff = compare_state_dicts(expected_sd, state_dict_cpu(m32))
    if diff is not None and layout_written != want:
        log(f"  reload after layout rewrite differs ({diff}); restoring the layout save_pretrained wrote")
        save_pretrained(model, mdir)
        if original_cfg is not None:
            rewrite_config_hub_style(mdir)
        want = layout_written
        m32, used32 = from_pretrained(MixtralForCausalLM, mdir, torch.float32, device)
        diff = compare_state_dicts(expected_sd, state_dict_cpu(m32))
    if diff is not None and original_cfg is not None:
        log(f"  reload after Hub-style config rewrite differs ({diff}); restoring config.json")
        with open(os.path.join(mdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(original_cfg)
        original_cfg = None
        m32, used32 = from_pretrained(MixtralForCausalLM, mdir, torch.float32, device)
        diff = compare_state_dicts(expected_sd, state_dict_cpu(m32))
    if diff is not None:
        raise RuntimeError(f"{name}: reloaded weights differ from the saved model: {diff}")
    checks["reload_weights_identical"] = True
    checks["checkpoint_layout_on_disk"] = classify_layout(
        [k for k in read_safetensors_header(st_path)[0] if k != "__metadata__"])
    checks["config_style_on_disk"] = "hub" if original_cfg is not None else "hf5"
    checks["fp32_load"] = used32
    checks["reloaded_theta_config"] = effective_theta(m32.config)
    checks["reloaded_rotary_theta_from_inv_freq"] = rotary_theta_from_model(m32, hd)
    log(f"  reloaded fp32: {used32}; theta={checks['reloaded_theta_config']}")
    del model

    with open(os.path.join(mdir, "config.json"), encoding="utf-8") as f:
        cfg_json = json.load(f)
    sem = config_json_semantics(cfg_json)
    if abs(sem["theta"] - spec["rope_theta"]) > 1e-9 * spec["rope_theta"]:
        raise RuntimeError(f"{name}: config.json on disk yields theta {sem['theta']}, wanted {spec['rope_theta']}")
    checks["config_semantics"] = sem

    W, layout_read = load_checkpoint_as_legacy_f64(mdir, sem)

    # ---- references -------------------------------------------------------------------------------------------
    tensors = {}
    prompt_records = []
    all_ok = True
    for k, prompt in enumerate(prompts):
        rec = {"key": f"p{k}", "prompt_ids": prompt}
        with torch.no_grad():
            prefill = full_logits(m32, prompt, device)                                   # [T, V]
            toks, steps = greedy_recompute(m32, prompt, GEN_TOKENS, device)             # primary reference
            c_toks, c_steps = greedy_cached(m32, prompt, GEN_TOKENS, device)
        rec["greedy_tokens"] = toks
        pc = {}
        pc["step0_equals_prefill_last_maxabs"] = float((steps[0] - prefill[-1]).abs().max())
        pc["kv_cache_tokens_equal"] = c_toks == toks
        pc["kv_cache_step_logits_maxabs"] = float((c_steps - steps).abs().max())
        try:
            with torch.no_grad():
                g_toks, g_steps, g_notes = greedy_generate(m32, prompt, GEN_TOKENS, device)
            pc["generate_tokens_equal"] = g_toks == toks
            pc["generate_notes"] = g_notes
            if g_steps is not None and tuple(g_steps.shape) == tuple(steps.shape):
                pc["generate_step_logits_maxabs"] = float((g_steps - steps).abs().max())
            if g_toks != toks:
                rec["hf_generate_tokens"] = g_toks
        except Exception as e:  # noqa: BLE001
            pc["generate_error"] = f"{type(e).__name__}: {e}"
            log(f"  p{k}: model.generate failed: {e!r}")
        # independent float64 implementation from config.json + safetensors
        full_seq = prompt + toks[:-1]
        ref = reference_forward_f64(W, sem, full_seq).float()
        T = len(prompt)
        pc["f64_prefill_maxabs"] = float((ref[:T] - prefill).abs().max())
        pc["f64_step_logits_maxabs"] = float((ref[T - 1:] - steps).abs().max())
        ref_argmax = ref[T - 1:].argmax(-1).tolist()
        pc["f64_greedy_equal"] = ref_argmax == toks
        pc["logit_abs_max"] = float(steps.abs().max())
        pc["min_top1_top2_gap"] = min_gap(steps)
        pc["distinct_greedy_tokens"] = len(set(toks))
        tol = 1e-3 * max(1.0, pc["logit_abs_max"])
        ok = (pc["f64_prefill_maxabs"] < tol and pc["f64_step_logits_maxabs"] < tol and pc["f64_greedy_equal"]
              and pc["kv_cache_tokens_equal"] and pc["step0_equals_prefill_last_maxabs"] < 1e-4)
        pc["all_ok"] = ok
        all_ok = all_ok and ok
        log(f"  p{k}: T={T} greedy[:12]={toks[:12]} distinct={pc['distinct_greedy_tokens']} "
            f"gap={pc['min_top1_top2_gap']:.3e} | f64 prefill {pc['f64_prefill_maxabs']:.2e} steps "
            f"{pc['f64_step_logits_maxabs']:.2e} | cache eq={pc['kv_cache_tokens_equal']} "
            f"({pc['kv_cache_step_logits_maxabs']:.2e}) | generate eq={pc.get('generate_tokens_equal')} "
            f"({pc.get('generate_step_logits_maxabs')}) | ok={ok}")
        t5i, t5v = topk_np(steps)
        tensors[f"p{k}.prompt_ids"] = np.asarray(prompt, dtype=np.int64)
        tensors[f"p{k}.prefill_logits"] = prefill.numpy().astype(np.float32)
        tensors[f"p{k}.greedy_tokens"] = np.asarray(toks, dtype=np.int64)
        tensors[f"p{k}.step_logits"] = steps.numpy().astype(np.float32)
        tensors[f"p{k}.fp32_step_top5"] = t5i
        tensors[f"p{k}.fp32_step_top5_logits"] = t5v
        rec["fp32_step_top5"] = t5i.tolist()
        rec["checks"] = pc
        prompt_records.append(rec)
    del m32
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # ---- bf16 ---------------------------------------------------------------------------------------------------
    m16, used16 = from_pretrained(MixtralForCausalLM, mdir, torch.bfloat16, device)
    checks["bf16_load"] = used16
    log(f"  reloaded bf16: {used16}")
    for k, prompt in enumerate(prompts):
        rec = prompt_records[k]
        mode = "kv_cache"
        try:
            with torch.no_grad():
                b_toks, b_steps = greedy_cached(m16, prompt, GEN_TOKENS, device)
        except Exception as e:  # noqa: BLE001
            log(f"  p{k}: bf16 KV-cache loop failed ({e!r}); using full recomputation")
            mode = "recompute"
            with torch.no_grad():
                b_toks, b_steps = greedy_recompute(m16, prompt, GEN_TOKENS, device)
        b5i, b5v = topk_np(b_steps)
        div = next((i for i in range(GEN_TOKENS) if b_toks[i] != rec["greedy_tokens"][i]), None)
        rec["bf16_greedy_tokens"] = b_toks
        rec["bf16_step_top5"] = b5i.tolist()
        rec["bf16_mode"] = mode
        rec["bf16_first_divergence_from_fp32"] = div
        if div is not None:
            fp32_top5 = rec["fp32_step_top5"][div]
            rec["bf16_divergence_top5_agree"] = (b_toks[div] in fp32_top5 and rec["greedy_tokens"][div] in b5i[div].tolist())
        log(f"  p{k}: bf16 ({mode}) greedy[:12]={b_toks[:12]} first divergence from fp32: {div}")
        tensors[f"p{k}.bf16_greedy_tokens"] = np.asarray(b_toks, dtype=np.int64)
        tensors[f"p{k}.bf16_step_top5"] = b5i
        tensors[f"p{k}.bf16_step_top5_logits"] = b5v
    del m16

    # ---- write ----------------------------------------------------------------------------------------------------
    ref_meta = {"generator": "Fiddler.Tests/Fixtures/make_fixtures.py", "model": name,
                "date": meta_common["date"], "device": meta_common["device"],
                "transformers": str(meta_common["versions"].get("transformers")),
                "torch": str(meta_common["versions"].get("torch")), "gen_tokens": str(GEN_TOKENS)}
    ref_path = os.path.join(mdir, "reference.safetensors")
    write_safetensors(ref_path, tensors, ref_meta)
    try:  # read back with the official package when present
        import safetensors.numpy as stn
        back = stn.load_file(ref_path)
        assert set(back) == set(tensors) and all(np.array_equal(back[n], tensors[n]) for n in tensors)
        checks["reference_readback"] = "safetensors.numpy ok"
    except ImportError:
        checks["reference_readback"] = "safetensors package not installed"
    record = {
        "model": name,
        "spec": spec,
        "initializer_range": init,
        "seed": seed,
        "norm_weights": "1 + 0.1*N(0,1) (perturbed so that a missing norm weight is detected)",
        "gen_tokens": GEN_TOKENS,
        "eos_handling": "EOS ignored: exactly gen_tokens greedy steps (argmax of raw logits, no logits processors)",
        "fp32_reference_mode": "full recomputation of the whole sequence at every step (no KV cache)",
        "sliding_window_semantics": "query i attends key j iff i - W < j <= i (HF masking_utils sliding_window_overlay)",
        "prompts": prompt_records,
        "checks": checks,
        "checkpoint_layout_read_by_f64_reference": layout_read,
        "all_checks_ok": all_ok,
        "files": {f: {"bytes": os.path.getsize(os.path.join(mdir, f)), "sha256": file_sha256(os.path.join(mdir, f))}
                  for f in sorted(os.listdir(mdir)) if os.path.isfile(os.path.join(mdir, f))},
        **meta_common,
    }
    with open(os.path.join(mdir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return record


# --------------------------------------------------------------------------------------------------------------
# Tokenizer cases
# --------------------------------------------------------------------------------------------------------------
def make_tokenizer_cases(tokdir, out_dir, meta_common):
    from tokenizers import Tokenizer
    tj = os.path.join(tokdir, "tokenizer.json")
    tok = Tokenizer.from_file(tj)
    auto, auto_err = None, None
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(tokdir, local_files_only=True)
        log(f"AutoTokenizer loaded: {type(auto).__name__}")
    except Exception as e:  # noqa: BLE001
        auto_err = f"{type(e).__name__}: {e}"
        log(f"AutoTokenizer did not load: {auto_err}")

    cases = []
    n_auto_diff = 0
    for text in TOKENIZER_TEXTS:
        enc = tok.encode(text, add_special_tokens=True)
        enc_ns = tok.encode(text, add_special_tokens=False)
        entry = {
            "text": text,
            "ids": enc.ids,
            "ids_no_special": enc_ns.ids,
            "decoded": tok.decode(enc.ids, skip_special_tokens=True),
            "tokens": enc.tokens,
            "decoded_keep_special": tok.decode(enc.ids, skip_special_tokens=False),
            "decoded_no_special_ids": tok.decode(enc_ns.ids, skip_special_tokens=True),
            "roundtrip_exact": tok.decode(enc.ids, skip_special_tokens=True) == text,
        }
        if auto is not None:
            try:
                a_ids = list(auto.encode(text, add_special_tokens=True))
                a_ns = list(auto.encode(text, add_special_tokens=False))
                a_dec = auto.decode(a_ids, skip_special_tokens=True)
                same = a_ids == enc.ids and a_ns == enc_ns.ids and a_dec == entry["decoded"]
                entry["auto_tokenizer_agrees"] = same
                if not same:
                    n_auto_diff += 1
                    entry["auto_tokenizer"] = {"ids": a_ids, "ids_no_special": a_ns, "decoded": a_dec}
            except Exception as e:  # noqa: BLE001
                entry["auto_tokenizer_error"] = f"{type(e).__name__}: {e}"
        cases.append(entry)

    vocab = tok.get_vocab(with_added_tokens=True)

    def tid(s):
        return vocab.get(s)

    decode_cases = []
    byte_seqs = {
        "euro sign from byte tokens": ["<0xE2>", "<0x82>", "<0xAC>"],
        "lone UTF-8 lead byte": ["<0xE2>"],
        "newline byte token": ["<0x0A>"],
    }
    for label, toks in byte_seqs.items():
        ids = [tid(t) for t in toks]
        if None not in ids:
            decode_cases.append({"label": label, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    for label, text in (("hello world", "Hello world"), ("leading space", " x")):
        ids = tok.encode(text, add_special_tokens=False).ids
        decode_cases.append({"label": label + " without BOS", "ids": ids,
                             "decoded": tok.decode(ids, skip_special_tokens=True)})
    # every single token decoded on its own (useful for streaming decoders): first 300 ids
    single = [{"id": i, "token": tok.id_to_token(i), "decoded": tok.decode([i], skip_special_tokens=False)}
              for i in range(min(300, tok.get_vocab_size(with_added_tokens=True)))]

    chat_cases = []
    if auto is not None and getattr(auto, "chat_template", None):
        convs = [
            [{"role": "user", "content": "Hello!"}],
            [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "And 3+3?"}],
        ]
        for conv in convs:
            try:
                rendered = auto.apply_chat_template(conv, tokenize=False)
                ids = tok.encode(rendered, add_special_tokens=False).ids
                chat_cases.append({"messages": conv, "rendered": rendered, "ids": ids})
            except Exception as e:  # noqa: BLE001
                chat_cases.append({"messages": conv, "error": f"{type(e).__name__}: {e}"})

    with open(os.path.join(out_dir, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        # one case per line: valid JSON, diff-friendly
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")
    tdir = os.path.join(out_dir, "tokenizer")
    if os.path.isdir(tdir):
        shutil.rmtree(tdir)
    os.makedirs(tdir)
    copied = []
    for fn in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = os.path.join(tokdir, fn)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(tdir, fn))
            copied.append(fn)
    meta = {
        "tokenizer_dir": os.path.abspath(tokdir),
        "tokenizer_json_sha256": file_sha256(tj),
        "copied_files": copied,
        "encode": "tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=...)",
        "decode": "decode(ids, skip_special_tokens=True) unless the field says keep_special",
        "auto_tokenizer_class": type(auto).__name__ if auto is not None else None,
        "auto_tokenizer_error": auto_err,
        "auto_tokenizer_disagreements": n_auto_diff,
        "decode_cases": decode_cases,
        "single_token_decodes": single,
        "chat_template_cases": chat_cases,
        **meta_common,
    }
    with open(os.path.join(out_dir, "tokenizer_cases.meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"tokenizer cases: {len(cases)} texts, {len(decode_cases)} decode cases, {len(chat_cases)} chat cases, "
        f"AutoTokenizer disagreements: {n_auto_diff}")


README_TEXT = """# Fiddler.Tests/Fixtures

Generated by `make_fixtures.py` (see its docstring for the exact tensor list); do not edit by hand.
Regenerate on a machine with PyTorch + transformers:

    python Fiddler.Tests/Fixtures/make_fixtures.py --out Fiddler.Tests/Fixtures --tokenizer Fiddler.Host/DefaultModel/model

Each sub-folder is a tiny random Mixtral checkpoint (float32, `save_pretrained`) plus `reference.safetensors`
(fp32 prefill logits, 32 greedy tokens and their step logits, bf16 greedy tokens and top-5 ids per step) and
`reference.json` (the same ids as lists, metadata and the self-checks that were run: KV-cache loop vs full
recomputation vs `model.generate`, and an independent float64 implementation that reads only config.json +
model.safetensors).

Models: {models}

Greedy decoding ignores EOS (exactly 32 steps). Sliding window: query i sees keys j with i - W < j <= i.
Generated {date} with transformers {tf}, torch {torch} on {device}.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="fixtures directory (e.g. Fiddler.Tests/Fixtures)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--tokenizer", default=None, help="directory holding tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--only", default=None, help="comma-separated model names to (re)generate")
    ap.add_argument("--skip-models", action="store_true", help="only write the tokenizer cases")
    args = ap.parse_args()

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # exact fp32: no TF32 anywhere
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception:  # noqa: BLE001
        pass
    try:
        torch.set_float32_matmul_precision("highest")
    except Exception:  # noqa: BLE001
        pass
    os.makedirs(args.out, exist_ok=True)
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    meta_common = {
        "versions": versions(),
        "device": f"{device} ({dev_name})",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    log(f"versions: {meta_common['versions']}")
    log(f"device: {meta_common['device']}")

    failures = []
    records = []
    if not args.skip_models:
        meta_common["modeling_notes"] = print_modeling_notes()
        only = set(args.only.split(",")) if args.only else None
        for spec in SPECS:
            if only and spec["name"] not in only:
                continue
            try:
                rec = make_one(spec, args.out, device, meta_common)
                records.append(rec)
                if not rec["all_checks_ok"]:
                    failures.append(f"{spec['name']}: some self-checks failed (see reference.json)")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                failures.append(f"{spec['name']}: {type(e).__name__}: {e}")
    if args.tokenizer:
        try:
            make_tokenizer_cases(args.tokenizer, args.out, meta_common)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            failures.append(f"tokenizer cases: {type(e).__name__}: {e}")

    if records:
        models = ", ".join(f"`{r['model']}`" for r in records)
        v = meta_common["versions"]
        with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
            f.write(README_TEXT.format(models=models, date=meta_common["date"], tf=v.get("transformers"),
                                       torch=v.get("torch"), device=meta_common["device"]))

    total = 0
    for root, _, files in os.walk(args.out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    log(f"total size of {args.out}: {total / 1e6:.2f} MB")
    for r in records:
        log(f"summary {r['model']}: layout={r['checks'].get('checkpoint_layout_on_disk')} "
            f"config={r['checks'].get('config_style_on_disk')} all_checks_ok={r['all_checks_ok']} "
            + " ".join(f"p{k}:div={p.get('bf16_first_divergence_from_fp32')}" for k, p in enumerate(r["prompts"])))
    if failures:
        log("FAILURES:")
        for f_ in failures:
            log("  " + f_)
        sys.exit(1)
    log("done")


if __name__ == "__main__":
    main()

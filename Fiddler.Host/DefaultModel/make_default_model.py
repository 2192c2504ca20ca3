#!/usr/bin/env python3
"""Builds Fiddler.NET's embedded default model: a small Mixtral (MoE) plus a Mistral-style BPE tokenizer,
trained from scratch in a few minutes on one GPU, saved in bfloat16 safetensors (target <= 8 MB).

No network is used at any point (no Hub downloads); everything is trained from the local corpus.

Corpus
------
The corpus is plain English text made from Debian's fortune cookie files. On a Debian machine:

    apt-get install -y fortunes fortunes-min
    python3 Fiddler.Host/DefaultModel/make_default_model.py \
        --build-corpus-from-fortunes /usr/share/games/fortunes --corpus-out .corpus/fortunes.txt

(`Fiddler.Host/DefaultModel/build_corpus.sh` does exactly this.) Corpus building needs only the Python standard
library. It reads every regular file in the directory, skipping `*.dat` index files, the `*.u8` symlinks (which
duplicate the plain files) and `ascii-art`; splits each file at lines consisting of `%`; removes overstrike
sequences (`X\\b`), control characters and tabs; trims each line, drops blank lines inside a fortune, collapses
runs of spaces, drops duplicates, and writes one fortune per paragraph, paragraphs separated by one blank line.

Training (on the GPU machine; /opt/torch/.venv/bin/python has torch, transformers, tokenizers)
--------------------------------------------------------------------------------------------------
    python Fiddler.Host/DefaultModel/make_default_model.py --corpus .corpus/fortunes.txt \
        --out Fiddler.Host/DefaultModel/model --minutes 4

Steps: (1) train a byte-fallback BPE tokenizer in the style of Mistral/Mixtral's tokenizer.json (ids 0/1/2 =
<unk>/<s>/</s>, ids 3..258 = <0x00>..<0xFF>, normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer,
decoder Replace("▁", " ") + ByteFallback + Fuse + Strip(1 leading space), post-processor "<s> $A"); with
`--tokenizer-style metaspace` the normalizer is replaced by a Metaspace(prepend_scheme="first", split=false)
pre-tokenizer instead. (2) train MixtralForCausalLM from scratch with AdamW + bf16 autocast, cosine LR over the
time budget, keeping the weights with the best held-out loss. (3) save in bfloat16 with save_pretrained (checkpoint
rewritten to the Hub's per-expert tensor names if transformers wrote fused expert tensors), tokenizer files, and a
README.md; print greedy and sampled generations.

Files written to --out: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json, README.md, training_log.json.
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import string
import struct
import sys
import time
import traceback

# Exact template of mistralai/Mixtral-8x7B-Instruct-v0.1's original tokenizer_config.json.
MIXTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

SPECIALS = ["<unk>", "<s>", "</s>"]
SAMPLE_PROMPTS = ["The meaning of life is", "Once upon a time", "A computer is", "Q: Why did the chicken cross the road?\nA:"]


def log(*args):
    print("[default_model]", *args, flush=True)


# ============================================================================================================
# Corpus (standard library only)
# ============================================================================================================
_OVERSTRIKE = re.compile(r".\x08")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r" {2,}")
_MOJIBAKE_HINT = re.compile(r"[\u00c2-\u00f4][\u0080-\u00bf]")


def fix_mojibake(line):
    """Undo UTF-8 text that was decoded as Latin-1 (once or more; a few fortunes contain such lines)."""
    for _ in range(4):
        if not _MOJIBAKE_HINT.search(line):
            break
        try:
            line = line.encode("latin-1").decode("utf-8")
        except UnicodeError:
            break
    return line


def clean_paragraph(chunk):
    s = chunk
    while True:
        t = _OVERSTRIKE.sub("", s)
        if t == s:
            break
        s = t
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    lines = []
    for line in s.split("\n"):
        line = _SPACES.sub(" ", _CTRL.sub("", fix_mojibake(line)).strip())
        if line:
            lines.append(line)
    return "\n".join(lines)


def read_text_file(path):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def build_corpus_from_fortunes(src_dir, out_path, extra_files=(), skip=("ascii-art",)):
    docs, seen, used_files = [], set(), []
    for fn in sorted(os.listdir(src_dir)):
        p = os.path.join(src_dir, fn)
        if fn.endswith(".dat") or fn.endswith(".u8") or fn in skip or os.path.islink(p) or not os.path.isfile(p):
            continue
        n0 = len(docs)
        for chunk in re.split(r"^%[ \t]*$", read_text_file(p), flags=re.M):
            d = clean_paragraph(chunk)
            if d and d not in seen:
                seen.add(d)
                docs.append(d)
        used_files.append((fn, len(docs) - n0))
    for p in extra_files:
        n0 = len(docs)
        for chunk in re.split(r"\n\s*\n", read_text_file(p)):
            d = clean_paragraph(chunk)
            if d and d not in seen:
                seen.add(d)
                docs.append(d)
        used_files.append((p, len(docs) - n0))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    text = "\n\n".join(docs) + "\n"
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    for fn, n in used_files:
        log(f"  {fn}: {n} paragraphs")
    size = os.path.getsize(out_path)
    log(f"corpus: {out_path}: {len(docs)} paragraphs, {size} bytes ({size / 1e6:.2f} MB), "
        f"{len(text.split())} words, sha256 {sha256_file(out_path)}")
    return out_path


def read_corpus_docs(path):
    text = read_text_file(path)
    docs = [d.strip("\n") for d in re.split(r"\n[ \t]*\n", text)]
    return [d for d in docs if d.strip()]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ============================================================================================================
# Tokenizer
# ============================================================================================================
LLAMA_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
]}
LLAMA_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0},
]}
METASPACE_PRE_TOKENIZER = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
BOS_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
}


def _merge_pair(m):
    if isinstance(m, str):
        a, b = m.split(" ", 1)
        return a, b
    return m[0], m[1]


def train_tokenizer(docs, vocab_size, style, limit_alphabet):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t0 = time.time()
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Training-time segmentation: newline is its own piece; words carry a leading ▁ like SentencePiece.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
    ])
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation + "\n\t\u2581"))
    kw = dict(vocab_size=vocab_size - 256, min_frequency=2, special_tokens=SPECIALS, limit_alphabet=limit_alphabet,
              initial_alphabet=alphabet, show_progress=False)
    trainer = trainers.BpeTrainer(**kw)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    trained = json.loads(tok.to_str())
    old_vocab = trained["model"]["vocab"]
    merges = trained["model"]["merges"]
    log(f"tokenizer: BPE trained in {time.time() - t0:.1f}s: {len(old_vocab)} pieces, {len(merges)} merges")

    # Llama/Mistral id layout: 0..2 specials, 3..258 byte-fallback tokens, then the learned pieces.
    for i, s in enumerate(SPECIALS):
        if old_vocab.get(s) != i:
            raise RuntimeError(f"trainer put {s} at id {old_vocab.get(s)}, expected {i}")
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(old_vocab.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    for m in merges:
        a, b = _merge_pair(m)
        for p in (a, b, a + b):
            if p not in vocab:
                raise RuntimeError(f"merge {m!r} refers to {p!r} which is not in the vocabulary")
    if style == "llama":
        normalizer, pre_tokenizer = LLAMA_NORMALIZER, None
    elif style == "metaspace":
        normalizer, pre_tokenizer = None, METASPACE_PRE_TOKENIZER
    else:
        raise ValueError(style)
    final = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": BOS_POST_PROCESSOR,
        "decoder": LLAMA_DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    return Tokenizer.from_str(json.dumps(final, ensure_ascii=False))


def check_tokenizer(tok):
    """Round trips and byte fallback; returns a list of problems (empty if fine)."""
    problems = []
    texts = ["Hello world", "The meaning of life is", "héllo wörld 😀 日本語", "line one\nline two\n\nline four",
             "multiple   spaces", "tab\there", "x"]
    for t in texts:
        enc = tok.encode(t)
        dec = tok.decode(enc.ids, skip_special_tokens=True)
        if enc.ids[:1] != [1]:
            problems.append(f"{t!r}: encoding does not start with <s>: {enc.ids[:5]}")
        if dec != t:
            problems.append(f"round trip {t!r} -> {enc.tokens} -> {dec!r}")
        log(f"  {t!r} -> {enc.tokens[:16]}{' ...' if len(enc.tokens) > 16 else ''}")
    emoji = tok.encode("😀", add_special_tokens=False)
    if not all(re.fullmatch(r"<0x[0-9A-F]{2}>", s) for s in emoji.tokens if s != "\u2581"):
        problems.append(f"emoji not byte-fallback encoded: {emoji.tokens}")
    if tok.encode("", add_special_tokens=True).ids != [1]:
        problems.append(f"empty string encodes to {tok.encode('').ids}")
    return problems


def write_tokenizer_files(tok, out_dir, max_len):
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, s in enumerate(SPECIALS)}
    tc = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "chat_template": MIXTRAL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": max_len,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "use_default_system_prompt": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    stm = {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
           for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(stm, f, indent=2, ensure_ascii=False)
        f.write("\n")


def check_auto_tokenizer(out_dir, tok):
    """Load the saved files with transformers.AutoTokenizer (offline) and compare with the raw tokenizer."""
    info = {}
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        log(f"AutoTokenizer could not load the tokenizer: {e!r}")
        return {"error": repr(e)}
    info["class"] = type(auto).__name__
    diffs = []
    for t in ["Hello world", "héllo 😀", "a\nb", "  two leading spaces", "[INST] hi [/INST]"]:
        a = list(auto.encode(t))
        r = tok.encode(t).ids
        if a != r:
            diffs.append({"text": t, "auto": a, "raw": r})
    info["encode_disagreements"] = diffs
    try:
        rendered = auto.apply_chat_template([{"role": "user", "content": "Hello!"},
                                             {"role": "assistant", "content": "Hi."},
                                             {"role": "user", "content": "Tell me a joke."}], tokenize=False)
        info["chat_template_rendered"] = rendered
        log(f"chat template renders: {rendered!r}")
    except Exception as e:  # noqa: BLE001
        info["chat_template_error"] = repr(e)
        log(f"chat template failed: {e!r}")
    log(f"AutoTokenizer: {info['class']}, {len(diffs)} encode disagreements with tokenizer.json"
        + (f": {diffs}" if diffs else ""))
    return info


# ============================================================================================================
# Model
# ============================================================================================================
_FUSED_GU = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.gate_up_proj$")
_FUSED_DN = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.down_proj$")
_FUSED_GATE = re.compile(r"^(model\.layers\.\d+)\.mlp\.gate\.weight$")
_LEGACY_EXPERT = re.compile(r"^model\.layers\.\d+\.block_sparse_moe\.experts\.\d+\.w[123]\.weight$")


def fused_to_legacy(sd, hidden, inter, n_exp):
    out = {}
    for k, v in sd.items():
        m = _FUSED_GU.match(k)
        if m:
            if tuple(v.shape) == (n_exp, 2 * inter, hidden):
                g, u = v[:, :inter, :], v[:, inter:, :]
            elif tuple(v.shape) == (n_exp, hidden, 2 * inter):
                g, u = v[:, :, :inter].transpose(1, 2), v[:, :, inter:].transpose(1, 2)
            else:
                raise ValueError(f"{k}: unexpected shape {tuple(v.shape)}")
            for e in range(n_exp):
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w1.weight"] = g[e].contiguous().clone()
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w3.weight"] = u[e].contiguous().clone()
            continue
        m = _FUSED_DN.match(k)
        if m:
            if tuple(v.shape) == (n_exp, hidden, inter):
                d = v
            elif tuple(v.shape) == (n_exp, inter, hidden):
                d = v.transpose(1, 2)
            else:
                raise ValueError(f"{k}: unexpected shape {tuple(v.shape)}")
            for e in range(n_exp):
                out[f"{m.group(1)}.block_sparse_moe.experts.{e}.w2.weight"] = d[e].contiguous().clone()
            continue
        m = _FUSED_GATE.match(k)
        if m:
            out[f"{m.group(1)}.block_sparse_moe.gate.weight"] = v.contiguous().clone()
            continue
        out[k] = v.contiguous().clone()
    return out


def effective_theta(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        return float(rp["rope_theta"])
    rt = getattr(cfg, "rope_theta", None)
    return None if rt is None else float(rt)


def build_config(args, vocab_size):
    from transformers import MixtralConfig
    common = dict(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        hidden_act="silu", max_position_embeddings=args.max_pos, initializer_range=0.02, rms_norm_eps=1e-5,
        use_cache=True, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, sliding_window=None,
        attention_dropout=0.0, num_experts_per_tok=args.top_k, num_local_experts=args.experts,
        output_router_logits=False, router_aux_loss_coef=args.aux_coef, router_jitter_noise=0.0,
    )
    errors = []
    for label, extra in (("rope_parameters", {"rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta}}),
                         ("rope_theta", {"rope_theta": args.rope_theta})):
        try:
            cfg = MixtralConfig(**common, **extra)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{label}: {e!r}")
            continue
        got = effective_theta(cfg)
        if got is not None and abs(got - args.rope_theta) <= 1e-9 * args.rope_theta:
            log(f"MixtralConfig built with {label}; effective rope theta {got}")
            return cfg
        errors.append(f"{label}: effective theta {got!r}")
    raise RuntimeError("could not build MixtralConfig: " + "; ".join(errors))


def set_experts_impl(model, impl):
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(impl)
    else:
        model.config._experts_implementation = impl


def _torch():
    import torch  # imported lazily so that corpus building needs only the standard library
    return torch


def lr_at(step, elapsed, args):
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    frac = min(1.0, elapsed / (args.minutes * 60.0))
    cos = 0.5 * (1.0 + math.cos(math.pi * frac))
    return args.lr * warm * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cos)


def train_model(args, cfg, train_ids, val_ids, device):
    torch = _torch()
    import torch.nn.functional as F
    from transformers import MixtralForCausalLM

    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = MixtralForCausalLM(cfg).to(device=device, dtype=torch.float32)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters -> {2 * n_params / 1e6:.2f} MB in bf16 "
        f"(attn impl {getattr(model.config, '_attn_implementation', None)}, "
        f"experts impl {getattr(model.config, '_experts_implementation', None)})")
    if 2 * n_params > args.size_target_mb * 1e6:
        log(f"WARNING: bf16 size {2 * n_params / 1e6:.2f} MB exceeds the target {args.size_target_mb} MB")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))
    except Exception as e:  # noqa: BLE001
        log(f"fused AdamW unavailable ({e!r}); using the default implementation")
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    train = torch.from_numpy(train_ids.astype("int64")).to(device)
    val = torch.from_numpy(val_ids.astype("int64")).to(device)
    B, L, V = args.batch, args.seq_len, cfg.vocab_size
    if len(train) < L + 2 or len(val) < L + 2:
        raise RuntimeError(f"corpus too small for seq_len {L}: train {len(train)} val {len(val)} tokens")
    ar = torch.arange(L + 1, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n_val_batches = max(1, min(8, (len(val) - L - 1) // (B * L) + 1))
    vstarts = torch.linspace(0, len(val) - L - 2, n_val_batches * B, device=device).long().view(n_val_batches, B)
    def autocast():
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)

    def batch_from(data, starts):
        idx = starts[:, None] + ar[None, :]
        chunk = data[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def step_loss(x, y, with_aux):
        with autocast():
            out = model(input_ids=x, use_cache=False, output_router_logits=with_aux)
        loss = F.cross_entropy(out.logits.float().reshape(-1, V), y.reshape(-1))
        aux = getattr(out, "aux_loss", None) if with_aux else None
        return loss, aux

    @torch.no_grad()
    def evaluate():
        model.eval()
        tot = 0.0
        for i in range(n_val_batches):
            x, y = batch_from(val, vstarts[i])
            loss, _ = step_loss(x, y, False)
            tot += float(loss)
        model.train()
        return tot / n_val_batches

    use_aux = args.aux_coef > 0
    # first step doubles as a probe of the experts implementation
    impls_tried = []
    compiled = False
    while True:
        try:
            starts = torch.randint(0, len(train) - L - 1, (B,), device=device, generator=gen)
            x, y = batch_from(train, starts)
            loss, aux = step_loss(x, y, use_aux)
            total = loss + (args.aux_coef * aux if aux is not None else 0.0)
            total.backward()
            opt.zero_grad(set_to_none=True)
            break
        except Exception as e:  # noqa: BLE001
            impls_tried.append((getattr(model.config, "_experts_implementation", None), repr(e)))
            log(f"training step failed with experts implementation "
                f"{getattr(model.config, '_experts_implementation', None)!r}: {e!r}")
            opt.zero_grad(set_to_none=True)
            if len(impls_tried) >= 2:
                raise
            set_experts_impl(model, "eager")
            log("switched experts implementation to 'eager'")
    if aux is None and use_aux:
        log("note: model output has no aux_loss; training without the router load-balancing loss")
    if args.compile:
        try:
            model = torch.compile(model)
            compiled = True
            log("torch.compile enabled")
        except Exception as e:  # noqa: BLE001
            log(f"torch.compile failed ({e!r}); continuing uncompiled")

    history = []
    best = (float("inf"), -1, None)
    t_start = time.time()
    step, tokens = 0, 0
    ema = None
    budget = args.minutes * 60.0
    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget:
            break
        lr = lr_at(step, elapsed, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train) - L - 1, (B,), device=device, generator=gen)
        x, y = batch_from(train, starts)
        loss, aux = step_loss(x, y, use_aux)
        total = loss + (args.aux_coef * aux if aux is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += B * L
        if step % args.log_every == 0 or step == 1:
            lv = float(loss)
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            rec = {"step": step, "time_s": round(time.time() - t_start, 1), "lr": lr, "loss": lv,
                   "aux": None if aux is None else float(aux), "grad_norm": float(gn)}
            if step % args.eval_every == 0:
                vl = evaluate()
                rec["val_loss"] = vl
                if vl < best[0]:
                    raw = model._orig_mod if compiled else model
                    best = (vl, step, {k: v.detach().clone() for k, v in raw.state_dict().items()})
            history.append(rec)
            log(f"step {step:6d} {rec['time_s']:7.1f}s lr {lr:.2e} loss {lv:.4f} (ema {ema:.4f})"
                + (f" aux {rec['aux']:.3f}" if rec["aux"] is not None else "")
                + f" gnorm {rec['grad_norm']:.2f} tok/s {tokens / max(1e-9, time.time() - t_start):,.0f}"
                + (f" | val {rec['val_loss']:.4f}" if "val_loss" in rec else ""))
    raw = model._orig_mod if compiled else model
    final_val = evaluate()
    log(f"training done: {step} steps, {tokens:,} tokens ({tokens / max(1, len(train)):.1f} epochs), "
        f"{time.time() - t_start:.0f}s; final val loss {final_val:.4f}; best val {best[0]:.4f} at step {best[1]}")
    summary = {"steps": step, "tokens": tokens, "epochs": tokens / max(1, len(train)),
               "seconds": time.time() - t_start, "final_val_loss": final_val,
               "last_train_loss": history[-1]["loss"] if history else None,
               "experts_impl_failures": impls_tried,
               "experts_implementation": getattr(raw.config, "_experts_implementation", None),
               "attn_implementation": getattr(raw.config, "_attn_implementation", None)}
    if best[2] is not None and best[0] < final_val:
        raw.load_state_dict(best[2])
        summary["kept"] = f"best checkpoint (step {best[1]}, val {best[0]:.4f})"
        summary["val_loss"] = best[0]
    else:
        summary["kept"] = "final weights"
        summary["val_loss"] = final_val
    log(f"keeping {summary['kept']}")
    raw.eval()
    return raw, history, summary, evaluate


def expert_usage(model, ids, device, top_k):
    torch = _torch()
    x = torch.tensor([ids[: min(len(ids), 512)]], device=device)
    with torch.no_grad():
        out = model(input_ids=x, use_cache=False, output_router_logits=True)
    rl = getattr(out, "router_logits", None)
    if not rl:
        return None
    usage = []
    for layer_logits in rl:
        sel = torch.topk(layer_logits.float().reshape(-1, layer_logits.shape[-1]), top_k, dim=-1).indices
        counts = torch.bincount(sel.reshape(-1), minlength=layer_logits.shape[-1]).float()
        usage.append([round(float(c), 3) for c in (counts / counts.sum())])
    return usage


def sample(model, tok, prompt, device, max_new, temperature=0.0, top_p=1.0, seed=0):
    """Plain sampling loop (full recompute, tiny model) so no generate() API differences matter."""
    torch = _torch()
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = tok.encode(prompt).ids
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([ids + out], device=device)
            logits = model(input_ids=x, use_cache=False).logits[0, -1].float().cpu()
            if temperature <= 0:
                nxt = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                sp = sp * keep
                nxt = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
            if nxt == 2:
                break
            out.append(nxt)
    return prompt, tok.decode(ids + out, skip_special_tokens=True)


def save_model(model, out_dir, args):
    torch = _torch()
    import inspect
    model = model.to(torch.bfloat16)
    model.config.output_router_logits = False
    model.config.use_cache = True
    for attr in ("dtype", "torch_dtype"):
        try:
            setattr(model.config, attr, torch.bfloat16)
            break
        except Exception:  # noqa: BLE001
            continue
    gc = model.generation_config
    for k, v in (("bos_token_id", 1), ("eos_token_id", 2)):
        try:
            setattr(gc, k, v)
        except Exception:  # noqa: BLE001
            pass
    for old in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        p = os.path.join(out_dir, old)
        if os.path.exists(p):
            os.remove(p)
    kw = {}
    params = inspect.signature(model.save_pretrained).parameters
    if "safe_serialization" in params:
        kw["safe_serialization"] = True
    if "max_shard_size" in params:
        kw["max_shard_size"] = "2GB"
    model.save_pretrained(out_dir, **kw)
    st_path = os.path.join(out_dir, "model.safetensors")
    if not os.path.isfile(st_path):
        raise RuntimeError(f"save_pretrained did not write a single model.safetensors: {sorted(os.listdir(out_dir))}")
    import safetensors.torch as st
    with open(st_path, "rb") as f:  # read the header directly (8-byte length + JSON)
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8"))
    meta = header.get("__metadata__") or {"format": "pt"}
    keys = [k for k in header if k != "__metadata__"]
    if any(_FUSED_GU.match(k) or _FUSED_DN.match(k) for k in keys):
        sd = st.load_file(st_path)
        sd = fused_to_legacy(sd, args.hidden, args.intermediate, args.experts)
        st.save_file(sd, st_path, metadata=dict(meta))
        layout = "rewritten from fused to Hub per-expert layout"
    elif any(_LEGACY_EXPERT.match(k) for k in keys):
        layout = "Hub per-expert layout as written by save_pretrained"
    else:
        raise RuntimeError(f"unrecognised checkpoint layout: {keys[:8]}")
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg_json = json.load(f)
    if cfg_json.get("dtype", cfg_json.get("torch_dtype")) != "bfloat16":
        cfg_json["dtype"] = "bfloat16"
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(cfg_json, f, indent=2, sort_keys=True)
            f.write("\n")
        log("patched config.json dtype -> bfloat16")
    log(f"saved: {layout}; model.safetensors {os.path.getsize(st_path) / 1e6:.2f} MB")
    return model, layout, cfg_json


def reload_and_check(out_dir, model, device, evaluate_fn):
    torch = _torch()
    from transformers import MixtralForCausalLM
    m2 = None
    for kw in (dict(dtype=torch.bfloat16), dict(torch_dtype=torch.bfloat16)):
        try:
            m2 = MixtralForCausalLM.from_pretrained(out_dir, local_files_only=True, **kw).to(device).eval()
            break
        except TypeError:
            continue
    if m2 is None:
        raise RuntimeError("from_pretrained failed")
    a = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    b = {k: v.detach().cpu() for k, v in m2.state_dict().items()}
    same = set(a) == set(b) and all(torch.equal(a[k].to(b[k].dtype), b[k]) for k in a)
    log(f"reload check: weights identical after save/load: {same}")
    return same, m2


def _fmt(v):
    return "n/a" if v is None else f"{v:.4f}"


def write_readme(out_dir, info):
    s = info
    lines = [
        "# Fiddler.NET default model",
        "",
        "A deliberately tiny Mixtral-architecture mixture-of-experts language model, trained from scratch in a few",
        "minutes so that Fiddler.NET can run end to end without downloading anything. It produces fortune-cookie",
        "flavoured English and is not useful for anything else. Made by `Fiddler.Host/DefaultModel/make_default_model.py`.",
        "",
        "## Architecture (`MixtralForCausalLM`)",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok",
              "max_position_embeddings", "rope_theta", "rms_norm_eps", "sliding_window", "tie_word_embeddings",
              "dtype"):
        lines.append(f"| {k} | {s['arch'].get(k)} |")
    lines += [
        f"| parameters | {s['n_params']:,} |",
        f"| model.safetensors | {s['model_bytes']:,} bytes ({s['checkpoint_layout']}) |",
        "",
        "## Tokenizer",
        "",
        f"Byte-fallback BPE, {s['vocab_size']} tokens, trained on the same corpus with Hugging Face `tokenizers`,",
        "in the layout of Mistral/Mixtral's `tokenizer.json`: `<unk>`=0, `<s>`=1, `</s>`=2, `<0x00>`..`<0xFF>`=3..258,",
        f"style `{s['tokenizer_style']}`; `<s>` is prepended by the post-processor; chat template = the original",
        "Mixtral-8x7B-Instruct-v0.1 `[INST]` template (the model was not instruction-tuned).",
        "",
        "## Corpus",
        "",
        f"`{s['corpus_name']}`: {s['corpus_bytes']:,} bytes, {s['corpus_docs']:,} paragraphs, {s['corpus_tokens']:,}",
        f"tokens (sha256 `{s['corpus_sha256']}`). Built from Debian's `fortunes` and `fortunes-min` packages",
        "(`/usr/share/games/fortunes/*`, see `build_corpus.sh`); one fortune per paragraph. 2% of the paragraphs",
        "were held out for validation.",
        "",
        "## Training",
        "",
        f"From scratch, AdamW (lr {s['lr']}, betas 0.9/0.95, weight decay {s['weight_decay']}), cosine schedule over",
        f"{s['minutes']} minutes with {s['warmup']} warm-up steps, batch {s['batch']} x {s['seq_len']} tokens,",
        f"bf16 autocast, router load-balancing loss coefficient {s['aux_coef']}, on {s['device']}.",
        f"{s['train']['steps']:,} steps, {s['train']['tokens']:,} tokens ({s['train']['epochs']:.1f} epochs).",
        f"Kept: {s['train']['kept']}. Validation loss {s['train']['val_loss']:.4f} "
        f"(perplexity {math.exp(min(50, s['train']['val_loss'])):.1f}); last logged training loss "
        f"{_fmt(s['train']['last_train_loss'])}. Saved in bfloat16; validation loss of the saved bf16 weights "
        f"{_fmt(s.get('bf16_val_loss'))}.",
        "",
        f"Date: {s['date']}. Software: {', '.join(f'{k} {v}' for k, v in s['versions'].items())}.",
        "",
        "## Samples (bf16 checkpoint as saved)",
        "",
    ]
    for smp in s["samples"]:
        lines += [f"{smp['mode']}, prompt {smp['prompt']!r}:", "", "```text", smp["text"], "```", ""]
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def versions():
    v = {"python": sys.version.split()[0]}
    for mod in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-corpus-from-fortunes", metavar="DIR", default=None,
                    help="build the corpus from a fortunes directory (e.g. /usr/share/games/fortunes)")
    ap.add_argument("--corpus-out", default=".corpus/fortunes.txt", help="where --build-corpus-from-fortunes writes")
    ap.add_argument("--extra-text", nargs="*", default=[], help="extra plain-text files appended when building")
    ap.add_argument("--corpus", default=None, help="corpus text file (paragraphs separated by blank lines)")
    ap.add_argument("--out", default=None, help="output directory (e.g. Fiddler.Host/DefaultModel/model)")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time budget")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer-only", action="store_true")
    ap.add_argument("--tokenizer-style", choices=("llama", "metaspace"), default="llama")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--limit-alphabet", type=int, default=160)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--intermediate", type=int, default=96)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-pos", type=int, default=512)
    ap.add_argument("--rope-theta", type=float, default=1.0e6)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.02, help="router load-balancing loss coefficient")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=100, help="(multiple of --log-every)")
    ap.add_argument("--size-target-mb", type=float, default=8.0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    args = ap.parse_args()
    if args.eval_every % args.log_every:
        ap.error("--eval-every must be a multiple of --log-every")

    if args.build_corpus_from_fortunes:
        log(f"building corpus from {args.build_corpus_from_fortunes}")
        built = build_corpus_from_fortunes(args.build_corpus_from_fortunes, args.corpus_out, args.extra_text)
        if args.corpus is None:
            args.corpus = built
        if args.out is None:
            return
    if args.out is None or args.corpus is None:
        ap.error("--out and --corpus (or --build-corpus-from-fortunes) are required for training")

    t_all = time.time()
    import numpy as np
    os.makedirs(args.out, exist_ok=True)
    docs = read_corpus_docs(args.corpus)
    corpus_bytes = os.path.getsize(args.corpus)
    log(f"corpus {args.corpus}: {len(docs)} paragraphs, {corpus_bytes:,} bytes")
    val_docs = docs[::50]
    train_docs = [d for i, d in enumerate(docs) if i % 50 != 0]

    # ---- tokenizer ----
    tok = train_tokenizer(train_docs, args.vocab_size, args.tokenizer_style, args.limit_alphabet)
    problems = check_tokenizer(tok)
    for p in problems:
        log(f"TOKENIZER PROBLEM: {p}")
    write_tokenizer_files(tok, args.out, args.max_pos)
    auto_info = check_auto_tokenizer(args.out, tok)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    log(f"tokenizer written: vocab size {vocab_size}")
    if args.tokenizer_only:
        return

    def encode_stream(ds):
        encs = tok.encode_batch(ds, add_special_tokens=False)
        out = []
        for e in encs:
            out.append(1)
            out.extend(e.ids)
            out.append(2)
        return np.asarray(out, dtype=np.int32)

    train_ids = encode_stream(train_docs)
    val_ids = encode_stream(val_docs)
    n_unk = int((train_ids == 0).sum())
    log(f"tokens: train {len(train_ids):,}, val {len(val_ids):,}, <unk> {n_unk}, "
        f"{corpus_bytes / max(1, len(train_ids) + len(val_ids)):.2f} bytes/token")

    # ---- model ----
    torch = _torch()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    if not device.startswith("cuda"):
        log("WARNING: no CUDA device; training on CPU will be very slow")
    cfg = build_config(args, vocab_size)
    model, history, summary, evaluate_fn = train_model(args, cfg, train_ids, val_ids, device)
    usage = None
    try:
        usage = expert_usage(model, val_ids.tolist(), device, args.top_k)
        if usage:
            for i, u in enumerate(usage):
                log(f"expert usage layer {i}: {u}")
    except Exception as e:  # noqa: BLE001
        log(f"expert usage not available: {e!r}")

    # ---- save (bf16) ----
    model, layout, cfg_json = save_model(model, args.out, args)
    same, m2 = reload_and_check(args.out, model, device, evaluate_fn)
    bf16_val = None
    try:
        bf16_val = evaluate_fn()  # the trained model object, now converted to bf16 in place
        log(f"validation loss of the bf16 weights: {bf16_val:.4f}")
    except Exception as e:  # noqa: BLE001
        log(f"bf16 validation loss not available: {e!r}")
    samples = []
    for i, p in enumerate(SAMPLE_PROMPTS[:3]):
        for mode, temp, top_p in (("greedy", 0.0, 1.0), ("sampled t=0.8 top_p=0.95", 0.8, 0.95)):
            try:
                _, text = sample(m2, tok, p, device, 60, temp, top_p, seed=args.seed + i)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                text = f"<sampling failed: {e!r}>"
            samples.append({"prompt": p, "mode": mode, "text": text})
            log(f"[{mode}] {text!r}")

    n_params = sum(p.numel() for p in m2.parameters())
    hd = cfg_json.get("head_dim") or cfg_json["hidden_size"] // cfg_json["num_attention_heads"]
    rope_theta = (cfg_json.get("rope_parameters") or {}).get("rope_theta", cfg_json.get("rope_theta"))
    arch = dict(cfg_json, head_dim=hd, rope_theta=rope_theta, dtype=cfg_json.get("dtype", cfg_json.get("torch_dtype")))
    info = {
        "arch": arch, "n_params": n_params, "model_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors")),
        "checkpoint_layout": layout, "vocab_size": vocab_size, "tokenizer_style": args.tokenizer_style,
        "corpus_name": os.path.basename(args.corpus), "corpus_bytes": corpus_bytes, "corpus_docs": len(docs),
        "corpus_tokens": int(len(train_ids) + len(val_ids)), "corpus_sha256": sha256_file(args.corpus),
        "lr": args.lr, "weight_decay": args.weight_decay, "minutes": args.minutes, "warmup": args.warmup,
        "batch": args.batch, "seq_len": args.seq_len, "aux_coef": args.aux_coef,
        "device": f"{device} ({dev_name})", "train": summary,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "samples": samples, "bf16_val_loss": bf16_val,
    }
    write_readme(args.out, info)
    with open(os.path.join(args.out, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump({"info": info, "history": history, "expert_usage": usage, "tokenizer_problems": problems,
                   "auto_tokenizer": auto_info, "reload_weights_identical": same,
                   "args": vars(args), "platform": platform.platform()}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
                if os.path.isfile(os.path.join(args.out, f)))
    log(f"wrote {sorted(os.listdir(args.out))} ({total / 1e6:.2f} MB in total) in {time.time() - t_all:.0f}s")
    if problems or not same:
        log("finished WITH PROBLEMS (see above)")
        sys.exit(1)


if __name__ == "__main__":
    main()

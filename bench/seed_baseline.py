#!/usr/bin/env python3
"""The baselines Fiddler.NET is measured against, at Mixtral-8x7B shapes with random weights (no checkpoint).

--mode seed (default): the seed Fiddler algorithm (efeslab/fiddler, src/fiddler/mixtral.py) in plain PyTorch.
  Non-expert weights live on the GPU; a GPU budget is filled with experts (random placement, as the seed had no
  profile for us, or in popularity order with --popularity); every other expert lives in (pinned) CPU memory and
  is computed ON THE CPU in bf16 with torch.set_num_threads(16). Per layer: router on the GPU, top-2, then for each
  expert with tokens: GPU-resident -> compute on the GPU; else move its activations to the CPU, compute
  w2(silu(w1 x) * w3 x) there, move the result back. That rule holds at decode and at prefill (--prefill-policy
  seed-cost instead applies the seed's prefill cost rule: an expert with >= 10 tokens has its weights copied to
  the GPU and runs there, as the seed's latency_cpu=7 / latency_gpu=70 constants decide).
  The model is a small hand-written Mixtral forward (RMSNorm, RoPE, GQA attention through
  F.scaled_dot_product_attention, a preallocated KV cache), not transformers' modeling, so memory placement is
  fully controlled.

--mode accelerate: Hugging Face accelerate's CPU offload (dispatch_model with the device map that
  infer_auto_device_map gives for the budget, which is what from_pretrained(device_map="auto", max_memory=...)
  does). A full 93 GB model cannot be materialised in time, so a truncated transformers MixtralForCausalLM with a
  few layers (half GPU-resident, half offloaded) is timed layer by layer and the step time is scaled to the layer
  counts of the full model's device map; the output says "scaled from N layers".

Output: a table on stdout and, with --out, JSON (keys: model, gpu_budget_gib, decode_tok_s,
ttft_s {"16","128","512"}, gpu_hit_rate, mode, card, date, torch, and details).

  /opt/torch/.venv/bin/python bench/seed_baseline.py --gpu-budget-gib 24 --out bench/results/seed-24.json
  /opt/torch/.venv/bin/python bench/seed_baseline.py --mode accelerate --gpu-budget-gib 24
  python3 bench/seed_baseline.py --tiny            # CPU smoke test of the code path (tiny dims)
"""
import argparse
import datetime
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

GIB = 1024 ** 3

MIXTRAL_8X7B = dict(name="Mixtral-8x7B", layers=32, hidden=4096, inter=14336, experts=8, top_k=2, heads=32,
                    kv_heads=8, vocab=32000, rope_theta=1.0e6, eps=1e-5)
TINY = dict(name="tiny-mixtral", layers=2, hidden=64, inter=128, experts=8, top_k=2, heads=4, kv_heads=2,
            vocab=256, rope_theta=1.0e6, eps=1e-5)

# The seed's prefill cost constants (src/fiddler/mixtral.py): CPU cost = tokens * 7, GPU cost of a miss = 70.
SEED_LATENCY_CPU, SEED_LATENCY_GPU = 7, 70


def log(msg):
    print(msg, flush=True)


class Phases:
    """Wall time of each named phase, printed as it ends."""

    def __init__(self):
        self.times = {}

    def run(self, name, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        self.times[name] = round(time.perf_counter() - t, 3)
        log(f"  [{self.times[name]:8.2f} s] {name}")
        return r


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ----------------------------------------------------------------------------------------------------------------
# sizes and placement


def sizes(c):
    """Bytes (bf16) of one expert, of everything that is not an expert, and of the KV cache per position."""
    H, I, hd = c["hidden"], c["inter"], c["hidden"] // c["heads"]
    expert = 3 * H * I * 2
    attn = H * (c["heads"] * hd) + 2 * H * (c["kv_heads"] * hd) + (c["heads"] * hd) * H
    per_layer = attn + c["experts"] * H + 2 * H
    non_expert = (c["layers"] * per_layer + 2 * c["vocab"] * H + H) * 2
    kv_per_pos = c["layers"] * 2 * c["kv_heads"] * hd * 2
    return expert, non_expert, kv_per_pos


def experts_on_gpu(c, budget_bytes, context):
    """How many experts fit the budget once non-expert weights and the KV cache for `context` positions are in."""
    expert, non_expert, kv_per_pos = sizes(c)
    free = budget_bytes - non_expert - kv_per_pos * context
    if free < 0:
        raise SystemExit(f"error: a {budget_bytes / GIB:.2f} GiB budget cannot hold the non-expert weights "
                         f"({non_expert / GIB:.2f} GiB) and the KV cache ({kv_per_pos * context / GIB:.2f} GiB)")
    return min(c["layers"] * c["experts"], int(free // expert))


def placement(c, n_gpu, popularity_file, seed):
    """Boolean [L][E]: True where the expert lives on the GPU."""
    L, E = c["layers"], c["experts"]
    pairs = [(l, e) for l in range(L) for e in range(E)]
    if popularity_file:
        with open(popularity_file) as f:
            counts = json.load(f)["counts"]
        if len(counts) != L or any(len(row) != E for row in counts):
            raise SystemExit(f"error: {popularity_file}: counts must be {L} rows of {E} integers")
        pairs.sort(key=lambda p: (-counts[p[0]][p[1]], p[0], p[1]))  # most popular first, ties by position
    else:
        random.Random(seed).shuffle(pairs)  # the seed's order without a profile is arbitrary: random
    on_gpu = [[False] * E for _ in range(L)]
    for l, e in pairs[:n_gpu]:
        on_gpu[l][e] = True
    return on_gpu


# ----------------------------------------------------------------------------------------------------------------
# random weights


def randn_(t, std, gen_dev, pool):
    """Fill `t` with N(0, std). CPU targets of a CUDA run are generated on the GPU in chunks and copied down
    (torch's CPU normal_ takes minutes for 70 GB; the GPU makes it in milliseconds and PCIe moves it at ~50 GB/s
    into pinned memory)."""
    if t.device.type != "cpu" or gen_dev.type == "cpu":
        t.normal_(0.0, std)
        return
    flat = t.view(-1)
    n, chunk = flat.numel(), pool.numel()
    for off in range(0, n, chunk):
        m = min(chunk, n - off)
        pool[:m].normal_(0.0, std)
        flat[off:off + m].copy_(pool[:m], non_blocking=True)  # same stream: the next normal_ waits for it
    torch.cuda.synchronize(gen_dev)


def pin(t):
    """Page-lock `t` in place (cudaHostRegister). Unlike pin_memory(), no copy and no power-of-two rounding of
    the caching host allocator (which would turn 68 GB of experts into ~99 GB)."""
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"cudaHostRegister failed: {err}")


class Weights:
    def __init__(self, c, dev, dtype, on_gpu, pin_cpu, phases):
        H, I, E, L = c["hidden"], c["inter"], c["experts"], c["layers"]
        hd = H // c["heads"]
        std = 0.02
        self.c, self.dev, self.dtype, self.on_gpu = c, dev, dtype, on_gpu
        cpu = torch.device("cpu")

        def dev_randn(*shape):
            return torch.empty(*shape, device=dev, dtype=dtype).normal_(0.0, std)

        def non_expert():
            self.embed = dev_randn(c["vocab"], H)
            self.lm_head = dev_randn(c["vocab"], H)
            self.norm = torch.ones(H, device=dev, dtype=dtype)
            self.layers = []
            for _ in range(L):
                self.layers.append(dict(
                    ln1=torch.ones(H, device=dev, dtype=dtype), ln2=torch.ones(H, device=dev, dtype=dtype),
                    wq=dev_randn(c["heads"] * hd, H), wk=dev_randn(c["kv_heads"] * hd, H),
                    wv=dev_randn(c["kv_heads"] * hd, H), wo=dev_randn(H, c["heads"] * hd),
                    gate=dev_randn(E, H)))
            sync(dev)

        def gpu_experts():
            # experts[l][e] = (w1 [I,H], w3 [I,H], w2 [H,I]) on the device where they live
            self.experts = [[None] * E for _ in range(L)]
            for l in range(L):
                for e in range(E):
                    if on_gpu[l][e]:
                        slab = dev_randn(3, I * H)
                        self.experts[l][e] = (slab[0].view(I, H), slab[1].view(I, H), slab[2].view(H, I))
            sync(dev)

        # CPU experts: one slab per layer, so a layer's experts are contiguous and pinned with one call.
        self.cpu_slabs = []

        def cpu_alloc():
            for l in range(L):
                n = sum(1 for e in range(E) if not on_gpu[l][e])
                slab = torch.empty(n, 3, I * H, dtype=dtype, device=cpu) if n else None
                if slab is not None:
                    slab.zero_()  # fault the pages in with all threads (cudaHostRegister would do it on one)
                self.cpu_slabs.append(slab)

        def cpu_pin():
            for slab in self.cpu_slabs:
                if slab is not None:
                    pin(slab)

        def cpu_fill():
            pool = torch.empty(min(256 * 1024 * 1024, max(1, I * H)), device=dev, dtype=dtype) if dev.type == "cuda" else None
            for l, slab in enumerate(self.cpu_slabs):
                if slab is None:
                    continue
                randn_(slab, std, dev, pool)
                k = 0
                for e in range(E):
                    if not on_gpu[l][e]:
                        s = slab[k]
                        self.experts[l][e] = (s[0].view(I, H), s[1].view(I, H), s[2].view(H, I))
                        k += 1
            del pool

        phases.run("non-expert weights (GPU)", non_expert)
        phases.run("GPU experts", gpu_experts)
        phases.run("CPU experts: allocate + fault in", cpu_alloc)
        self.pinned = False
        if pin_cpu and dev.type == "cuda":
            try:
                phases.run("CPU experts: pin (cudaHostRegister)", cpu_pin)
                self.pinned = True
            except Exception as ex:  # noqa: BLE001 - unpinned memory still runs the CPU path
                log(f"  warning: pinning failed ({ex}); CPU experts stay pageable")
        phases.run("CPU experts: random fill", cpu_fill)


# ----------------------------------------------------------------------------------------------------------------
# the model: Mixtral forward, batch 1


def rms_norm(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def sdpa(q, k, v, causal):
    """q [H,T,D], k/v [H,S,D] (kv heads already repeated)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=causal)[0]
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # torch < 2.0 (Debian's 1.13)
    if causal:
        T, S = q.shape[1], k.shape[1]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1), float("-inf"))
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)


class SeedMixtral:
    def __init__(self, w, cpu_threads, prefill_policy, max_context):
        self.w, self.c, self.dev, self.dtype = w, w.c, w.dev, w.dtype
        c = self.c
        self.hd = c["hidden"] // c["heads"]
        self.prefill_policy = prefill_policy
        self.cpu = torch.device("cpu")
        torch.set_num_threads(cpu_threads)
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        ang = torch.arange(max_context, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        self.cos = emb.cos().to(self.dev, self.dtype)
        self.sin = emb.sin().to(self.dev, self.dtype)
        self.k_cache = [torch.zeros(c["kv_heads"], max_context, self.hd, device=self.dev, dtype=self.dtype)
                        for _ in range(c["layers"])]
        self.v_cache = [torch.zeros_like(k) for k in self.k_cache]
        self.length = 0
        # one GPU slot for --prefill-policy seed-cost (the seed's expert_placeholder)
        self.slot = None
        if prefill_policy == "seed-cost" and self.dev.type == "cuda":
            H, I = c["hidden"], c["inter"]
            s = torch.empty(3, I * H, device=self.dev, dtype=self.dtype)
            self.slot = (s[0].view(I, H), s[1].view(I, H), s[2].view(H, I))
        self.reset_counters()

    def reset_counters(self):
        self.hits = 0
        self.assignments = 0
        self.cpu_expert_calls = 0
        self.transfers = 0

    def attention(self, l, x, pos0):
        c, lw = self.c, self.w.layers[l]
        T, H, KV, hd = x.shape[0], c["heads"], c["kv_heads"], self.hd
        q = F.linear(x, lw["wq"]).view(T, H, hd).transpose(0, 1)    # [H, T, hd]
        k = F.linear(x, lw["wk"]).view(T, KV, hd).transpose(0, 1)   # [KV, T, hd]
        v = F.linear(x, lw["wv"]).view(T, KV, hd).transpose(0, 1)
        cos, sin = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        self.k_cache[l][:, pos0:pos0 + T] = k
        self.v_cache[l][:, pos0:pos0 + T] = v
        keys = self.k_cache[l][:, :pos0 + T].repeat_interleave(H // KV, dim=0)      # [H, S, hd]
        values = self.v_cache[l][:, :pos0 + T].repeat_interleave(H // KV, dim=0)
        assert T == 1 or pos0 == 0, "prefill starts at position 0 (a chunked prefill needs an explicit mask)"
        o = sdpa(q, keys, values, causal=T > 1)                                     # [H, T, hd]
        return F.linear(o.transpose(0, 1).reshape(T, H * hd), lw["wo"])

    @staticmethod
    def expert(w, x):
        w1, w3, w2 = w
        return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    def moe(self, l, x, prefill):
        c = self.c
        T, K = x.shape[0], c["top_k"]
        logits = F.linear(x, self.w.layers[l]["gate"])
        probs = torch.softmax(logits.float(), dim=-1)                    # as HF: fp32 softmax, top-k, renormalise
        weights, chosen = torch.topk(probs, K, dim=-1)                   # [T, K]
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype).view(-1)
        slots_of = {}
        for slot, e in enumerate(chosen.view(-1).tolist()):              # one host sync per layer
            slots_of.setdefault(e, []).append(slot)                      # slot = token * K + k
        on_gpu = self.w.on_gpu[l]
        out = torch.zeros_like(x)
        cpu_work = []
        for e, slots in sorted(slots_of.items()):
            self.assignments += len(slots)
            if on_gpu[e]:
                self.hits += len(slots)
                where = self.w.experts[l][e]
            elif prefill and self.slot is not None and len(slots) * SEED_LATENCY_CPU >= SEED_LATENCY_GPU:
                for dst, src in zip(self.slot, self.w.experts[l][e]):   # seed-cost policy: weights to the GPU
                    dst.copy_(src, non_blocking=True)
                self.transfers += 1
                where = self.slot
            else:
                cpu_work.append((e, slots))
                continue
            s = torch.tensor(slots, device=self.dev)
            tok = s // K
            y = self.expert(where, x.index_select(0, tok)) * weights.index_select(0, s)[:, None]
            out.index_add_(0, tok, y)
        if cpu_work:
            # Activations to the CPU once per layer, each CPU expert on its tokens (bf16, torch's CPU kernels),
            # results summed on the CPU and moved back once.
            x_cpu = x.to(self.cpu)
            w_cpu = weights.to(self.cpu)
            out_cpu = torch.zeros_like(x_cpu)
            for e, slots in cpu_work:
                s = torch.tensor(slots)
                tok = s // K
                y = self.expert(self.w.experts[l][e], x_cpu.index_select(0, tok)) * w_cpu.index_select(0, s)[:, None]
                out_cpu.index_add_(0, tok, y)
                self.cpu_expert_calls += 1
            out += out_cpu.to(self.dev)
        return out

    @torch.no_grad()
    def forward(self, ids):
        """ids: 1-D LongTensor on the device; returns fp32 logits of the last position."""
        c, pos0, T = self.c, self.length, ids.shape[0]
        x = self.w.embed.index_select(0, ids)
        for l in range(c["layers"]):
            lw = self.w.layers[l]
            x = x + self.attention(l, rms_norm(x, lw["ln1"], c["eps"]), pos0)
            x = x + self.moe(l, rms_norm(x, lw["ln2"], c["eps"]), prefill=T > 1)
        self.length += T
        x = rms_norm(x[-1:], self.w.norm, c["eps"])
        return F.linear(x, self.w.lm_head).float()[0]

    def prefill(self, prompt):
        """Fresh cache, prompt through the model, first token chosen; returns (token, seconds)."""
        self.length = 0
        sync(self.dev)
        t = time.perf_counter()
        tok = int(self.forward(prompt).argmax())
        return tok, time.perf_counter() - t

    def decode(self, tok, new_tokens):
        """new_tokens greedy steps after tok; returns (tokens, seconds)."""
        out = []
        t = time.perf_counter()
        for _ in range(new_tokens):
            tok = int(self.forward(torch.tensor([tok], device=self.dev)).argmax())
            out.append(tok)
        return out, time.perf_counter() - t


def run_seed(args, c, dev, phases):
    dtype = torch.bfloat16
    lengths = [int(s) for s in args.prompt_tokens.split(",")]
    context = max(max(lengths), args.decode_prompt_tokens) + args.new_tokens + 1
    expert_b, non_expert_b, kv_b = sizes(c)
    budget = int(args.gpu_budget_gib * GIB)
    if args.tiny:
        # Tiny dims: keep the GPU share of experts that the same budget gives the full-size model.
        full = experts_on_gpu(MIXTRAL_8X7B, budget, context)
        n_gpu = round(full / (MIXTRAL_8X7B["layers"] * MIXTRAL_8X7B["experts"]) * c["layers"] * c["experts"])
    else:
        n_gpu = experts_on_gpu(c, budget, context)
    if args.gpu_experts is not None:
        n_gpu = args.gpu_experts
    total = c["layers"] * c["experts"]
    cpu_bytes = (total - n_gpu) * expert_b
    log(f"placement: {n_gpu}/{total} experts on the GPU ({'popularity ' + args.popularity if args.popularity else 'random'}); "
        f"non-expert {non_expert_b / GIB:.2f} GiB + KV {kv_b * context / GIB:.3f} GiB + experts "
        f"{n_gpu * expert_b / GIB:.2f} GiB on the GPU; {cpu_bytes / GIB:.1f} GiB of experts in CPU memory")
    if cpu_bytes > args.max_host_gib * GIB:
        raise SystemExit(f"error: {cpu_bytes / GIB:.1f} GiB of CPU experts exceeds --max-host-gib {args.max_host_gib}")
    on_gpu = placement(c, n_gpu, args.popularity, args.seed)
    per_layer = [sum(row) for row in on_gpu]
    log(f"  experts on GPU per layer: {per_layer}")

    torch.manual_seed(args.seed)
    w = Weights(c, dev, dtype, on_gpu, pin_cpu=not args.no_pin, phases=phases)
    model = SeedMixtral(w, args.threads, args.prefill_policy, context)
    gen = torch.Generator().manual_seed(args.seed)

    def prompt(n):
        return torch.randint(0, c["vocab"], (n,), generator=gen).to(dev)

    phases.run("warm-up (prefill 32 + 4 decode steps)",
               lambda: model.decode(model.prefill(prompt(min(32, context - 8)))[0], 4))

    ttft, prefill_hit = {}, {}
    for n in lengths:
        model.reset_counters()
        _, t = phases.run(f"prefill {n} tokens", model.prefill, prompt(n))
        ttft[str(n)] = round(t, 4)
        prefill_hit[str(n)] = round(model.hits / max(1, model.assignments), 4)
        log(f"    TTFT {t:.3f} s, hit rate {prefill_hit[str(n)]:.3f}, CPU expert calls {model.cpu_expert_calls}, "
            f"weight transfers {model.transfers}")

    first, _ = model.prefill(prompt(args.decode_prompt_tokens))
    model.reset_counters()
    toks, decode_s = phases.run(f"decode {args.new_tokens} tokens after a {args.decode_prompt_tokens}-token prefill",
                                model.decode, first, args.new_tokens)
    assert model.assignments == c["layers"] * c["top_k"] * args.new_tokens
    hit = model.hits / max(1, model.assignments)
    tok_s = args.new_tokens / decode_s
    log(f"    {tok_s:.3f} tok/s ({decode_s * 1000 / args.new_tokens:.1f} ms/token), hit rate {hit:.3f}, "
        f"{model.cpu_expert_calls / args.new_tokens / c['layers']:.2f} CPU experts per layer-step")

    peak = torch.cuda.max_memory_allocated(dev) / GIB if dev.type == "cuda" else 0.0
    return dict(
        decode_tok_s=round(tok_s, 4), ttft_s=ttft, gpu_hit_rate=round(hit, 4),
        details=dict(
            algorithm="seed Fiddler: GPU-resident experts on the GPU, all others computed on the CPU (torch bf16)"
                      + (" ; prefill: seed cost rule (>= 10 tokens -> weights to the GPU)" if args.prefill_policy == "seed-cost" else ""),
            prefill_policy=args.prefill_policy,
            placement="popularity:" + args.popularity if args.popularity else "random",
            experts_on_gpu=n_gpu, experts_total=total, experts_on_gpu_per_layer=per_layer,
            prefill_hit_rate=prefill_hit, decode_prompt_tokens=args.decode_prompt_tokens,
            new_tokens=args.new_tokens, decode_s=round(decode_s, 4), cpu_threads=args.threads,
            cpu_experts_pinned=w.pinned, cpu_expert_gib=round(cpu_bytes / GIB, 2),
            gpu_peak_allocated_gib=round(peak, 2), phases_s=phases.times, cpu_experts_per_layer_step=round(model.cpu_expert_calls / args.new_tokens / c["layers"], 3),
            first_tokens=[first] + toks[:7]))


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face accelerate offload


def hf_config(c, layers):
    from transformers import MixtralConfig
    common = dict(vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["inter"],
                  num_hidden_layers=layers, num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
                  num_local_experts=c["experts"], num_experts_per_tok=c["top_k"], max_position_embeddings=4096,
                  rms_norm_eps=c["eps"], tie_word_embeddings=False, sliding_window=None, use_cache=True,
                  router_jitter_noise=0.0, output_router_logits=False)
    try:
        cfg = MixtralConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]})
    except TypeError:
        cfg = MixtralConfig(**common, rope_theta=c["rope_theta"])
    cfg._attn_implementation = "sdpa"
    return cfg


def layer_of(name):
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "model" and parts[1] == "layers":
        return int(parts[2])
    return None


def run_accelerate(args, c, dev, phases):
    if dev.type != "cuda":
        raise SystemExit("error: --mode accelerate needs CUDA (accelerate offloads to a GPU execution device)")
    import transformers
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import DynamicCache, MixtralForCausalLM

    dtype = torch.bfloat16
    budget = int(args.gpu_budget_gib * GIB)
    if args.tiny:
        # Room for the non-expert part and about one layer, so the map has GPU-resident and offloaded layers
        # (an all-CPU map makes dispatch_model run everything on the CPU).
        expert_b, non_expert_b, _ = sizes(c)
        budget = non_expert_b + int(1.5 * c["experts"] * expert_b)

    # 1. The device map accelerate gives the full model at this budget (meta tensors: no memory).
    def full_map():
        with init_empty_weights():
            full = MixtralForCausalLM(hf_config(c, c["layers"]))
        dm = infer_auto_device_map(full, max_memory={0: budget, "cpu": 512 * GIB},
                                   no_split_module_classes=full._no_split_modules, dtype=dtype)
        return dm
    dm = phases.run("infer_auto_device_map (full model, meta)", full_map)
    gpu_layers, cpu_layers = set(), set()
    for name, d in dm.items():
        if name in ("", "model", "model.layers"):
            (gpu_layers if d not in ("cpu", "disk") else cpu_layers).update(range(c["layers"]))
        elif layer_of(name) is not None:
            (gpu_layers if d not in ("cpu", "disk") else cpu_layers).add(layer_of(name))
    gpu_layers -= cpu_layers  # a layer split across devices counts as offloaded
    n_gpu_full, n_cpu_full = len(gpu_layers), c["layers"] - len(gpu_layers)
    others = {k: v for k, v in dm.items() if layer_of(k) is None and k not in ("", "model", "model.layers")}
    log(f"full model device map: {n_gpu_full} layers on GPU, {n_cpu_full} offloaded to CPU; others: {others}")

    # 2. A truncated model: half its layers GPU-resident, half offloaded (as many of each as the full map has).
    N = min(args.accel_layers, c["layers"])
    g = N if n_cpu_full == 0 else (0 if n_gpu_full == 0 else N // 2)
    tmap = {}
    for k, v in others.items():
        tmap[k] = v
    if "" in dm or "model" in dm:
        d = dm.get("", dm.get("model"))
        tmap.update({"model.embed_tokens": d, "model.norm": d, "model.rotary_emb": d, "lm_head": d})
    for l in range(N):
        tmap[f"model.layers.{l}"] = 0 if l < g else "cpu"
    cfg = hf_config(c, N)
    log(f"truncated device map: {tmap}")

    def build():
        with init_empty_weights():
            m = MixtralForCausalLM(cfg)
        pool = torch.empty(256 * 1024 * 1024, device=dev, dtype=dtype)
        for name, p in list(m.named_parameters()):
            target = None
            for k, v in tmap.items():
                if name == k or name.startswith(k + "."):
                    target = v
            target = "cpu" if target in ("cpu", "disk") else dev
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                val = torch.ones(p.shape, dtype=dtype, device=target)
            elif target == "cpu":
                val = torch.empty(p.shape, dtype=dtype)
                randn_(val, 0.02, dev, pool)
            else:
                val = torch.empty(p.shape, dtype=dtype, device=dev).normal_(0.0, 0.02)
            set_module_tensor_to_device(m, name, target, value=val)
        del pool
        m.eval()
        return dispatch_model(m, device_map=tmap, main_device=0)
    model = phases.run(f"build + dispatch a {N}-layer model ({g} GPU-resident, {N - g} offloaded)", build)

    layer_t = [0.0] * N
    starts = {}

    def pre(i):
        def h(mod, a, kw=None):
            torch.cuda.synchronize(dev)
            starts[i] = time.perf_counter()
        return h

    def post(i):
        def h(mod, a, out, kw=None):
            torch.cuda.synchronize(dev)
            layer_t[i] += time.perf_counter() - starts[i]
        return h
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(pre(i))
        layer.register_forward_hook(post(i))

    def step(ids, cache):
        kw = dict(input_ids=ids, past_key_values=cache, use_cache=True)
        try:
            out = model(**kw, logits_to_keep=1)
        except TypeError:
            out = model(**kw)
        return int(out.logits[0, -1].argmax())

    def new_cache():
        try:
            return DynamicCache(config=cfg)
        except TypeError:
            return DynamicCache()

    def timed(ids, cache):
        for i in range(N):
            layer_t[i] = 0.0
        torch.cuda.synchronize(dev)
        t = time.perf_counter()
        tok = step(ids, cache)
        total = time.perf_counter() - t
        return tok, total, list(layer_t)

    def scaled(total, lt):
        gpu_t = [lt[i] for i in range(N) if i < g]
        cpu_t = [lt[i] for i in range(N) if i >= g]
        per_gpu = sum(gpu_t) / len(gpu_t) if gpu_t else 0.0
        per_cpu = sum(cpu_t) / len(cpu_t) if cpu_t else 0.0
        return total - sum(lt) + n_gpu_full * per_gpu + n_cpu_full * per_cpu, per_gpu, per_cpu

    gen = torch.Generator().manual_seed(args.seed)

    def prompt(n):
        return torch.randint(0, c["vocab"], (1, n), generator=gen).to(dev)

    with torch.no_grad():
        phases.run("warm-up", lambda: step(prompt(8), new_cache()))
        ttft, measured = {}, {}
        for n in [int(s) for s in args.prompt_tokens.split(",")]:
            _, total, lt = phases.run(f"prefill {n} tokens ({N} layers)", timed, prompt(n), new_cache())
            s, pg, pc = scaled(total, lt)
            ttft[str(n)] = round(s, 4)
            measured[str(n)] = dict(step_s=round(total, 4), gpu_layer_s=round(pg, 4), offloaded_layer_s=round(pc, 4))
            log(f"    {N}-layer step {total:.3f} s (GPU layer {pg * 1000:.1f} ms, offloaded layer {pc * 1000:.1f} ms)"
                f" -> scaled TTFT {s:.3f} s")

        steps = args.accel_new_tokens
        cache = new_cache()
        tok = step(prompt(args.decode_prompt_tokens), cache)
        totals, per_step = [], []

        def decode():
            nonlocal tok
            for _ in range(steps):
                tok, total, lt = timed(torch.tensor([[tok]], device=dev), cache)
                totals.append(total)
                per_step.append(scaled(total, lt))
        phases.run(f"decode {steps} tokens ({N} layers)", decode)
    step_s = sum(p[0] for p in per_step) / len(per_step)
    pg = sum(p[1] for p in per_step) / len(per_step)
    pc = sum(p[2] for p in per_step) / len(per_step)
    log(f"    {N}-layer decode step {sum(totals) / len(totals) * 1000:.1f} ms (GPU layer {pg * 1000:.2f} ms, "
        f"offloaded layer {pc * 1000:.1f} ms) -> scaled {step_s:.3f} s/token = {1 / step_s:.4f} tok/s")
    import accelerate
    return dict(
        decode_tok_s=round(1.0 / step_s, 5), ttft_s=ttft,
        gpu_hit_rate=round(n_gpu_full / c["layers"], 4),
        details=dict(
            scaled_from=f"scaled from {N} layers ({g} GPU-resident, {N - g} offloaded) to the full model's "
                        f"{n_gpu_full} GPU-resident + {n_cpu_full} offloaded layers",
            full_device_map_gpu_layers=n_gpu_full, full_device_map_cpu_layers=n_cpu_full,
            full_device_map_others={k: str(v) for k, v in others.items()},
            gpu_hit_rate_note="fraction of layers (hence of expert calls) whose weights are GPU-resident",
            decode_steps_measured=steps, decode_step_s_scaled=round(step_s, 4),
            decode_gpu_layer_s=round(pg, 5), decode_offloaded_layer_s=round(pc, 5),
            prefill_measured=measured, transformers=transformers.__version__, accelerate=accelerate.__version__,
            phases_s=phases.times))


# ----------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["seed", "accelerate"], default="seed")
    ap.add_argument("--gpu-budget-gib", type=float, default=24.0)
    ap.add_argument("--popularity", help='JSON {"counts": [[E ints] x L]}: place experts in popularity order')
    ap.add_argument("--prompt-tokens", default="16,128,512", help="prompt lengths for TTFT")
    ap.add_argument("--decode-prompt-tokens", type=int, default=16, help="prefill before the decode measurement")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-policy", choices=["cpu", "seed-cost"], default="cpu",
                    help="cpu: misses run on the CPU at prefill too; seed-cost: the seed's rule (>= 10 tokens "
                         "-> copy the expert's weights to the GPU)")
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1), help="torch CPU threads")
    ap.add_argument("--gpu-experts", type=int, help="override the number of GPU-resident experts")
    ap.add_argument("--no-pin", action="store_true", help="leave CPU experts pageable")
    ap.add_argument("--max-host-gib", type=float, default=100.0, help="refuse to put more experts in CPU memory")
    ap.add_argument("--accel-layers", type=int, default=4, help="accelerate mode: layers of the truncated model")
    ap.add_argument("--accel-new-tokens", type=int, default=16, help="accelerate mode: decode steps measured")
    ap.add_argument("--tiny", action="store_true", help="tiny dims (hidden 64, 2 layers, vocab 256) for smoke tests")
    ap.add_argument("--device", help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    c = TINY if args.tiny else MIXTRAL_8X7B
    dev = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            # cuDNN SDPA builds a plan per key length: 34 ms per layer per decode step measured on the H100.
            torch.backends.cuda.enable_cudnn_sdp(False)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    thp = ""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        pass
    log(f"{args.mode} baseline: {c['name']}, budget {args.gpu_budget_gib} GiB, device {dev} ({card}), "
        f"torch {torch.__version__}, {args.threads} CPU threads, THP: {thp or '?'}")

    phases = Phases()
    t0 = time.perf_counter()
    r = (run_seed if args.mode == "seed" else run_accelerate)(args, c, dev, phases)
    result = dict(
        model=c["name"] + " (random bf16 weights)", gpu_budget_gib=args.gpu_budget_gib,
        decode_tok_s=r["decode_tok_s"], ttft_s=r["ttft_s"], gpu_hit_rate=r["gpu_hit_rate"], mode=args.mode,
        card=card, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        wall_s=round(time.perf_counter() - t0, 1), **r["details"])

    log("")
    log(f"| baseline | card | budget GiB | decode tok/s | TTFT s ({', '.join(result['ttft_s'])} tokens) | GPU hit rate |")
    log("|---|---|---|---|---|---|")
    log(f"| {args.mode} | {card} | {args.gpu_budget_gib:g} | {result['decode_tok_s']:.3f} | "
        f"{' / '.join(f'{v:.3f}' for v in result['ttft_s'].values())} | {result['gpu_hit_rate']:.3f} |")
    if "scaled_from" in result:
        log(f"({result['scaled_from']})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""GPU time of the serial chain between two offloaded decode layers, on this GPU (no host launch cost counted).

After a layer's CPU lane ends, the device runs: the CPU results' copy and adds, the residual, then the next layer's
RMSNorm, fused q/k/v projection, RoPE, KV-cache writes, attention, o_proj, residual, RMSNorm and router, before the
routing can be read back. This queues that chain (the same ops as Fiddler.Kernels, Mixtral-8x7B shapes, bf16) behind
a sleeping kernel, so the host is far ahead, and times it with CUDA events: eager (kernel by kernel) and as one CUDA
graph. Prints JSON.

    python bench/decode_chain.py [--context 544] [--repeats 200]
"""
import argparse, json
import torch

p = argparse.ArgumentParser()
p.add_argument("--context", type=int, default=544)
p.add_argument("--repeats", type=int, default=200)
a = p.parse_args()
dev, dt = "cuda", torch.bfloat16
D, H, KV, Dh, E, K = 4096, 32, 8, 128, 8, 2
torch.manual_seed(0)
w = lambda *s: (torch.randn(*s, device=dev, dtype=dt) * 0.02)
qkv_w, o_w, gate_w = w((H + 2 * KV) * Dh, D), w(D, H * Dh), w(E, D)
n1, n2 = torch.ones(D, device=dev, dtype=dt), torch.ones(D, device=dev, dtype=dt)
signs = torch.tensor([[1.0], [-1.0]], device=dev, dtype=dt)
kc = torch.zeros(1, KV, a.context + 8, Dh, device=dev, dtype=dt)
vc = torch.zeros_like(kc)
pos = a.context - 1
freqs = torch.outer(torch.tensor([float(pos)], device=dev), 1.0 / (1e6 ** (torch.arange(0, Dh, 2, device=dev).float() / Dh)))
cos = torch.cat([freqs, freqs], -1).cos().to(dt).unsqueeze(1)
sin_half = freqs.sin()
ssin = torch.cat([-sin_half, sin_half], -1).to(dt).unsqueeze(1)
x = w(1, 1, D)
moe_out = torch.zeros(1, D, device=dev, dtype=dt)
host_y = torch.randn(1, D).pin_memory()
rw = torch.rand(1, 2, device=dev, dtype=dt)

def rms(t, wt):
    pair = t.unsqueeze(-2) * signs
    return wt * torch.nn.functional.layer_norm(pair, [2, D], eps=1e-5).select(-2, 0)

def chain():
    y = host_y.to(dev, non_blocking=True).to(dt)                 # CPU lane results
    out = moe_out.clone()
    out.addcmul_(y, rw.narrow(1, 0, 1))
    h = x + out.view(1, 1, D)                                     # residual after the MoE
    qkv = torch.nn.functional.linear(rms(h, n1), qkv_w).view(1, 1, H + 2 * KV, Dh)
    qk = qkv.narrow(2, 0, H + KV)
    qk = qk * cos + qk.roll(Dh // 2, -1) * ssin
    k = qk.narrow(2, H, KV).transpose(1, 2)
    v = qkv.narrow(2, H + KV, KV).transpose(1, 2)
    kc.narrow(2, pos, 1).copy_(k)
    vc.narrow(2, pos, 1).copy_(v)
    q = qk.narrow(2, 0, H).reshape(1, KV, H // KV, Dh)
    o = torch.nn.functional.scaled_dot_product_attention(q, kc.narrow(2, 0, pos + 1), vc.narrow(2, 0, pos + 1))
    h2 = h + torch.nn.functional.linear(o.reshape(1, 1, H * Dh), o_w)
    logits = torch.nn.functional.linear(rms(h2, n2).view(1, D), gate_w)
    top, ids = logits.topk(K, -1)
    return ids, top.softmax(-1, dtype=torch.float32).to(dt)

def timed(fn):
    for _ in range(10): fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(200_000_000)                                # keep the device busy while the host queues ahead
    start.record()
    for _ in range(a.repeats): fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / a.repeats

eager = timed(chain)
kernels = None
try:
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        chain(); torch.cuda.synchronize()
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
except Exception as e:  # the profiler is optional
    kernels = f"profiler failed: {e}"
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(3): chain()
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    chain()
graph = timed(g.replay)
print(json.dumps({"card": torch.cuda.get_device_name(), "context": a.context, "device_ops_eager": kernels,
                  "chain_us_eager": round(eager, 1), "chain_us_graph": round(graph, 1)}))

#!/usr/bin/env python3
"""Host-to-device copy rates of a split expert's GPU part, as the engine copies it and as a contiguous layout would.

A CPU/GPU split gives the GPU an expert's intermediate rows [k, I): w1 and w3 rows are contiguous in host memory, but
w2 is [H, I], so its columns [k, I) are H strided runs (the engine copies them with one cudaMemcpy2DAsync). With w2
stored transposed on the host ([I, H]) the same bytes would be one contiguous run. This program times both, for a few
GPU shares of an expert, alone and beside a CPU read load (the engine's CPU lane reads the same DRAM while it copies).

    python bench/copy_probe.py [--hidden 4096] [--intermediate 14336] [--shares 0.3,0.5,0.7] [--reps 20]

Prints one line per (share, load) with both layouts' GB/s; needs a CUDA GPU and PyTorch.
"""
import argparse
import ctypes
import glob
import os
import statistics
import threading

import torch


def load_cudart():
    """The libcudart torch already loaded (so our calls share its context), else one beside torch's libraries."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libcudart") and ".so" in path:
                return ctypes.CDLL(path)
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    for pattern in ("libcudart*.so*", "../../nvidia/cuda_runtime/lib/libcudart.so*"):
        found = sorted(glob.glob(os.path.join(torch_lib, pattern)))
        if found:
            return ctypes.CDLL(found[-1])
    return ctypes.CDLL("libcudart.so.12")


H2D = 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--shares", default="0.3,0.5,0.7", help="GPU shares of the expert's rows, comma-separated, in (0, 1]")
    ap.add_argument("--experts", type=int, default=8, help="distinct host experts cycled")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--load-threads", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="threads of the CPU read load")
    args = ap.parse_args()
    try:
        shares = [float(s) for s in args.shares.split(",")]
    except ValueError:
        raise SystemExit(f"copy_probe: --shares: '{args.shares}' is not a comma-separated list of numbers")
    if not torch.cuda.is_available():
        raise SystemExit("copy_probe: no CUDA device")
    if any(not 0 < s <= 1 for s in shares) or args.hidden <= 0 or args.intermediate <= 0 or args.reps < 1 or args.experts < 1:
        raise SystemExit("copy_probe: shares must be in (0, 1]; sizes, --experts and --reps positive")
    cudart = load_cudart()
    cudart.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    cudart.cudaMemcpy2DAsync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    h, i, es = args.hidden, args.intermediate, 2
    experts = [torch.empty(3 * i * h, dtype=torch.bfloat16, pin_memory=True).fill_(e) for e in range(args.experts)]
    dev = torch.empty(3 * i * h, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()

    def check(rc, what):
        if rc != 0:
            raise SystemExit(f"copy_probe: {what} failed with CUDA error {rc}")

    def copy(expert, rows, layout):
        """The GPU part (rows [i - rows, i)) of one expert: w1 rows, w3 rows, then w2 as strided columns or as rows."""
        base, dst, s = expert.data_ptr(), dev.data_ptr(), stream.cuda_stream
        first = (i - rows) * h * es
        block = rows * h * es
        check(cudart.cudaMemcpyAsync(dst, base + first, block, H2D, s), "cudaMemcpyAsync")
        check(cudart.cudaMemcpyAsync(dst + block, base + i * h * es + first, block, H2D, s), "cudaMemcpyAsync")
        w2 = base + 2 * i * h * es
        if layout == "strided":  # w2 [H, I]: H runs of rows*es bytes, pitch I*es
            check(cudart.cudaMemcpy2DAsync(dst + 2 * block, rows * es, w2 + (i - rows) * es, i * es, rows * es, h, H2D, s),
                  "cudaMemcpy2DAsync")
        else:  # w2 transposed [I, H]: one run
            check(cudart.cudaMemcpyAsync(dst + 2 * block, w2 + first, block, H2D, s), "cudaMemcpyAsync")
        return 3 * block

    stop = threading.Event()

    def cpu_load():
        torch.set_num_threads(args.load_threads)
        big = torch.ones(512 * 1024 * 1024, dtype=torch.float32)  # 2 GiB, read over and over
        while not stop.is_set():
            big.sum()

    print(f"copy probe: H={h} I={i} bf16, {args.experts} pinned experts, {torch.cuda.get_device_name()}, "
          f"CPU load {args.load_threads} threads")
    print(f"{'gpu share':>9} {'load':>5} {'strided GB/s':>13} {'rows GB/s':>10} {'rows/strided':>13}")
    for loaded in (False, True):
        loader = None
        if loaded:
            stop.clear()
            loader = threading.Thread(target=cpu_load, daemon=True)
            loader.start()
            torch.cuda.synchronize()
            threading.Event().wait(1.0)  # let the load reach DRAM
        for share in shares:
            rows = max(1, int(round(share * i)))
            rates = {}
            for layout in ("strided", "rows"):
                samples, n = [], 0
                for rep in range(args.reps + 2):
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record(stream)
                    nbytes = copy(experts[n % len(experts)], rows, layout)
                    end.record(stream)
                    end.synchronize()
                    n += 1
                    if rep >= 2:
                        samples.append(nbytes / (begin.elapsed_time(end) * 1e6))
                rates[layout] = statistics.median(samples)
            print(f"{share:9.2f} {'cpu' if loaded else 'none':>5} {rates['strided']:13.1f} {rates['rows']:10.1f} "
                  f"{rates['rows'] / rates['strided']:12.2f}x")
        if loader:
            stop.set()
            loader.join()


if __name__ == "__main__":
    main()

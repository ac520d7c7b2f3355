#!/usr/bin/env python3
"""Decode-attention peers for l2kv_bench_decode: PyTorch SDPA (cuDNN and flash backends),
q_len 1 with enable_gqa over contiguous KV of the same sizes, timed the same way (CUDA events
around the call, median of --reps, cold = L2 flushed by a 256 MiB write then a 256 MiB read)."""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

MODELS = {
    "llama2-7b": (32, 32, 128),
    "llama3-8b": (32, 8, 128),
    "qwen2.5-7b": (28, 4, 128),
    "qwen2.5-14b": (40, 8, 128),
}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16, 32, 64, 128])
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 4608, 8192, 8704, 32768])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--max-kv-gib", type=float, default=40)
    ap.add_argument("--flush", choices=["clean", "write"], default="clean",
                    help="as l2kv_bench_decode --flush")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    dev = torch.device("cuda")
    flush_write = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    flush_read = torch.ones(64 << 20, dtype=torch.float32, device=dev)

    def flush():
        flush_write.fill_(0x5A)
        if args.flush == "clean":
            flush_read.sum()  # leaves the L2 full of clean lines, as l2kv_bench_decode does

    def timed(fn, before, reps):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        stops = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            before()
            starts[i].record()
            fn()
            stops[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, stops))

    results = []
    for model in args.models:
        hq, hkv, d = MODELS[model]
        for batch in args.batches:
            for context in args.contexts:
                kv_bytes = 2 * batch * context * hkv * d * 2
                row = {"model": model, "batch": batch, "context": context, "kv_mib": kv_bytes / 2**20}
                if kv_bytes > args.max_kv_gib * 2**30:
                    row["skipped"] = "beyond --max-kv-gib"
                    results.append(row)
                    continue
                q = torch.randn(batch, hq, 1, d, dtype=torch.bfloat16, device=dev)
                k = torch.randn(batch, hkv, context, d, dtype=torch.bfloat16, device=dev)
                v = torch.randn(batch, hkv, context, d, dtype=torch.bfloat16, device=dev)
                for name in args.backends:
                    def call():
                        with sdpa_kernel(BACKENDS[name]):
                            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True,
                                                                  scale=1 / math.sqrt(d))
                    try:
                        for _ in range(3):
                            call()
                        torch.cuda.synchronize()
                        cold = timed(call, flush, args.reps)
                        warm = timed(call, lambda: None, args.reps)
                        row[name] = {"cold_us": cold, "warm_us": warm}
                    except Exception as e:  # a backend that rejects the shape is reported
                        row[name] = {"error": str(e).splitlines()[0][:200]}
                        torch.cuda.synchronize()
                del q, k, v
                torch.cuda.empty_cache()
                cells = " ".join(
                    f"{n}={row[n].get('cold_us', float('nan')):.1f}/{row[n].get('warm_us', float('nan')):.1f}"
                    for n in args.backends if n in row)
                print(f"peers {model} B={batch} S={context} {cells}", flush=True)
                results.append(row)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "command": " ".join(sys.argv), "flush": args.flush, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Causal prefill attention peers for l2kv_bench_prefill's kernel sweep: PyTorch SDPA (flash
and cuDNN backends), B prompts of N tokens each, bf16, enable_gqa, contiguous K/V, median of 20
after warm-up. --json writes every point."""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--heads", default="32:8")
ap.add_argument("--lengths", nargs="+", type=int,
                default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
ap.add_argument("--prompts", nargs="+", type=int, default=[1, 4])
ap.add_argument("--json")
args = ap.parse_args()
hq, hkv = map(int, args.heads.split(":"))
points = []
for b in args.prompts:
    for n in args.lengths:
        q = torch.randn(b, hq, n, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(b, hkv, n, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(b, hkv, n, 128, dtype=torch.bfloat16, device="cuda")
        flops = 4.0 * hq * 128 * b * n * (n + 1) / 2
        for name, backend in [("flash", SDPBackend.FLASH_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
            try:
                with sdpa_kernel(backend):
                    for _ in range(3):
                        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    times = []
                    for _ in range(20):
                        s = torch.cuda.Event(enable_timing=True)
                        e = torch.cuda.Event(enable_timing=True)
                        s.record()
                        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        e.record()
                        torch.cuda.synchronize()
                        times.append(s.elapsed_time(e) * 1e3)
                us = statistics.median(times)
                print(f"SDPA {name}, {b} x {n} tokens, {hq}:{hkv} heads: {us:.1f} us, "
                      f"{flops / us / 1e6:.0f} TFLOP/s", flush=True)
                points.append({"backend": name, "prompts": b, "tokens": n, "us": us,
                               "tflops": flops / us / 1e6})
            except Exception as ex:
                print(f"SDPA {name}, {b} x {n} tokens: error {str(ex).splitlines()[0][:120]}",
                      flush=True)
        del q, k, v
if args.json:
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "heads": args.heads,
                   "points": points}, f, indent=2)

#!/usr/bin/env python3
"""CPU check of compiled_torch_peer.py's decoder, eager: decode steps of a small GQA model
(with QKV bias) against an independent float32 reference written per sequence and head: the K
and V each step writes at its position, the slots it leaves alone, the greedy next tokens
(unless the reference's top two logits nearly tie) and the position cycling over the window;
with and without the causal mask; that the cache can be released and set up again; and the
CUDA-graph verdict drawn from profiler counts.
Needs torch (any version with torch.nn.functional; SDPA is emulated where it is missing).
Exits non-zero on the first mismatch."""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compiled_torch_peer as peer  # noqa: E402

KV_TOLERANCE = 3e-2  # bf16 cache entries against float32: a few roundings
TIE_MARGIN = 0.05  # logits this close may pick either token in bf16


def math_sdpa(q, k, v, attn_mask=None, enable_gqa=False):
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


if not hasattr(F, "scaled_dot_product_attention"):
    F.scaled_dot_product_attention = math_sdpa


def reference_step(m, s, tokens, pos, k_caches, v_caches, causal):
    """One step in float32, per sequence and head: logits and each layer's new K and V."""
    d, batch = peer.HEAD_DIM, tokens.shape[0]
    inv = 1.0 / (s["theta"] ** (torch.arange(0, d, 2).float() / d))
    cos, sin = (pos * inv).cos(), (pos * inv).sin()

    def rope(v):
        a, b = v[..., :d // 2], v[..., d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s["eps"]) * w.float()

    x = m.embed.float()[tokens[:, 0]]
    new_k, new_v = [], []
    group = s["heads"] // s["kv_heads"]
    attended = pos + 1 if causal else k_caches[0].shape[2]
    for li, layer in enumerate(m.layers):
        qkv = norm(x, layer.attn_norm) @ layer.wqkv.float().T
        if layer.bqkv is not None:
            qkv = qkv + layer.bqkv.float()
        qd, kd = s["heads"] * d, s["kv_heads"] * d
        q = rope(qkv[:, :qd].view(batch, s["heads"], d))
        k = rope(qkv[:, qd:qd + kd].view(batch, s["kv_heads"], d))
        v = qkv[:, qd + kd:].view(batch, s["kv_heads"], d)
        keys, values = k_caches[li].float().clone(), v_caches[li].float().clone()
        keys[:, :, pos], values[:, :, pos] = k, v
        new_k.append(k)
        new_v.append(v)
        o = torch.empty(batch, s["heads"], d)
        for b in range(batch):
            for h in range(s["heads"]):
                scores = keys[b, h // group, :attended] @ q[b, h] / math.sqrt(d)
                o[b, h] = scores.softmax(0) @ values[b, h // group, :attended]
        x = x + o.reshape(batch, -1) @ layer.wo.float().T
        gate, up = (norm(x, layer.mlp_norm) @ layer.w_gate_up.float().T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ layer.w_down.float().T
    return norm(x, m.final_norm) @ m.lm_head.float().T, new_k, new_v


def check(causal, batch=3, context=32, window=4, steps=6):
    shape = dict(peer.SMOKE_MODEL, hidden=512, heads=4, kv_heads=2, layers=2, qkv_bias=True)
    torch.manual_seed(0)
    m = peer.build_decoder(torch, shape, "cpu")
    if sum(p.numel() for p in m.parameters()) != peer.parameter_count(shape):
        sys.exit("parameter count differs from l2kv's formula")
    m.setup_cache(batch, context, window, causal, seed=7)
    for step in range(steps):
        pos, tokens = int(m.pos.item()), m.tokens.clone()
        k_caches = [layer.k_cache.clone() for layer in m.layers]
        v_caches = [layer.v_cache.clone() for layer in m.layers]
        logits, new_k, new_v = reference_step(m, shape, tokens, pos, k_caches, v_caches, causal)
        peer.decode_step(m)
        others = torch.ones(context, dtype=torch.bool)
        others[pos] = False
        for li, layer in enumerate(m.layers):
            for got, want, old in ((layer.k_cache, new_k[li], k_caches[li]),
                                   (layer.v_cache, new_v[li], v_caches[li])):
                diff = (got[:, :, pos].float() - want).abs().max() / want.abs().max()
                if diff > KV_TOLERANCE:
                    sys.exit(f"causal={causal} step {step} layer {li}: K/V off by {diff:.3g}")
                if not torch.equal(got[:, :, others], old[:, :, others]):
                    sys.exit(f"causal={causal} step {step} layer {li}: other slots changed")
        top2 = logits.topk(2, -1).values
        agree = (m.tokens[:, 0] == logits.argmax(-1)) | (top2[:, 0] - top2[:, 1] < TIE_MARGIN)
        if not agree.all():
            sys.exit(f"causal={causal} step {step}: tokens {m.tokens[:, 0].tolist()}, "
                     f"reference {logits.argmax(-1).tolist()}")
        first = context - window
        if int(m.pos.item()) != first + (pos - first + 1) % window:
            sys.exit(f"causal={causal} step {step}: position {int(m.pos.item())} after {pos}")
    m.release_cache()
    if list(m.buffers()):
        sys.exit("release_cache left buffers")
    m.setup_cache(2, 16, 16, causal, seed=1)
    peer.decode_step(m)
    print(f"causal mask {causal}: {steps} steps match the float32 reference")


class Event:
    """One row of torch.profiler's key_averages()."""

    def __init__(self, key, count, device_type="DeviceType.CPU", device_time_total=0.0):
        self.key, self.count = key, count
        self.device_type, self.device_time_total = device_type, device_time_total


def check_launch_verdicts(steps=5):
    kernel = Event("triton_red_fused_rms_norm_0", 65 * steps, "DeviceType.CUDA", 90.0 * steps)
    cases = [
        ("one graph per step", [Event("cudaGraphLaunch", steps), kernel], True),
        ("driver graph launch", [Event("cuGraphLaunch", steps)], True),
        ("eager Inductor", [Event("cuLaunchKernelEx", 40 * steps),
                            Event("cudaLaunchKernel", 30 * steps), kernel], False),
        ("graph plus an input copy kernel", [Event("cudaGraphLaunch", steps),
                                            Event("cudaLaunchKernel", steps)], False),
        ("two graphs per step", [Event("cudaGraphLaunch", 2 * steps)], False),
        ("nothing recorded", [kernel], None),
    ]
    for what, events, want in cases:
        got, counts = peer.classify_launches(events, steps)
        if got is not want:
            sys.exit(f"launch verdict for {what}: {got}, expected {want} ({counts})")
    print(f"CUDA-graph verdicts: {len(cases)} cases as expected")


def main():
    check_launch_verdicts()
    with torch.no_grad():
        for causal in (False, True):
            check(causal)
    print("compiled_torch_peer_check: passed")


if __name__ == "__main__":
    main()

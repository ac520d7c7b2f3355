#!/usr/bin/env python3
"""Compiled-PyTorch peer of `l2kv bench --mode steady`: a gpt-fast-style decoder (static KV cache
held as module buffers, SDPA with enable_gqa, RMSNorm, RoPE, SwiGLU, LM head to fp32 logits and
greedy argmax) compiled with torch.compile(mode="reduce-overhead", fullgraph=True) and Inductor's
coordinate-descent tuning, so the decode step runs as one CUDA graph. Same synthetic shapes as
l2kv (random bf16 weights), same steady-state point: `batch` sequences at `context` tokens.

One step: each sequence's token (the previous step's argmax, kept in a buffer on the device)
at position `pos` (one device scalar shared by the batch) writes its K and V at slot `pos` of the
static cache (index_copy_) and attends to the whole cache of `context` slots, prefilled with
random values; then the next token is written back to the buffer and `pos` advances on the
device, cycling over the last --window slots so the cache shape stays static. The host only
launches the graph: a steady step is one cudaGraphLaunch, which a torch.profiler run checks.

Timing: --steps back-to-back steps after the warm-up, one pair of CUDA events around each;
step_ms is the median (the host runs ahead, so no launch gap is timed); synced_step_ms syncs
after every step as `l2kv bench` does. MBU = bytes a step must read, counted as l2kv counts
them (all weights but the embedding table, plus K and V of batch x (context + 1) tokens), over
step time x the streaming-read ceiling (--ceiling-gbps from l2kv's run, else measured here).

--smoke: two tiny layers at batch 1 and 2, a few steps: catches errors in seconds. Writes the
JSON after every point, so an interrupted run keeps what it measured."""
import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

# l2kv's synthetic shapes (ModelConfig::synthetic in src/l2kv/model/model_config.cpp): head_dim
# 128, untied embeddings, plain RoPE (no llama3 scaling), QKV bias for Qwen2.5.
MODELS = {
    "llama2-7b": dict(vocab=32000, hidden=4096, inter=11008, layers=32, heads=32, kv_heads=32,
                      eps=1e-5, theta=10000.0, qkv_bias=False),
    "llama3-8b": dict(vocab=128256, hidden=4096, inter=14336, layers=32, heads=32, kv_heads=8,
                      eps=1e-5, theta=500000.0, qkv_bias=False),
    "qwen2.5-7b": dict(vocab=152064, hidden=3584, inter=18944, layers=28, heads=28, kv_heads=4,
                       eps=1e-6, theta=1000000.0, qkv_bias=True),
    "qwen2.5-14b": dict(vocab=152064, hidden=5120, inter=13824, layers=48, heads=40, kv_heads=8,
                        eps=1e-5, theta=1000000.0, qkv_bias=True),
}
SMOKE_MODEL = dict(vocab=1000, hidden=256, inter=512, layers=2, heads=2, kv_heads=1, eps=1e-5,
                   theta=10000.0, qkv_bias=True)
HEAD_DIM = 128
BF16_BYTES = 2
WEIGHT_STD = 0.02
# Free memory kept aside beyond the KV cache: logits, activations, the graph pool.
MEMORY_MARGIN_BYTES = 3 << 30
# Steps profiled for the CUDA-graph check.
PROFILED_STEPS = 5
# The K/V a compiled step writes in the first layer against the eager step's (max abs difference
# over max abs value): a few bf16 roundings apart.
FIRST_LAYER_KV_TOLERANCE = 2e-2


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["llama3-8b"], choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 128, 256])
    ap.add_argument("--context", type=int, default=1024,
                    help="tokens each sequence attends to (the static cache length)")
    ap.add_argument("--window", type=int, default=64,
                    help="positions cycle over the last WINDOW slots of the cache")
    ap.add_argument("--warmup", type=int, default=10, help="steps after the compile, untimed")
    ap.add_argument("--steps", type=int, default=100, help="timed back-to-back steps (median)")
    ap.add_argument("--synced-steps", type=int, default=20,
                    help="timed steps with a sync after each, as l2kv bench times (median)")
    ap.add_argument("--causal-mask", action="store_true",
                    help="pass gpt-fast's boolean mask (slots <= pos) to SDPA instead of "
                         "attending to the whole cache")
    ap.add_argument("--no-coordinate-descent", action="store_true",
                    help="Inductor without coordinate-descent tuning (faster compile)")
    ap.add_argument("--ceiling-gbps", type=float,
                    help="streaming-read ceiling in GB/s (l2kv bench's, same run); "
                         "measured here when absent")
    ap.add_argument("--time-budget-s", type=float,
                    help="skip the points left once this many seconds have passed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="self-check: 2 tiny layers, batch 1 and 2, context 64, a few steps")
    ap.add_argument("--json", help="output JSON (written after every point)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.batches, args.context, args.window = ["smoke"], [1, 2], 64, 8
        args.warmup, args.steps, args.synced_steps = 3, 10, 5
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be >= 1")
    if args.context < 1:
        ap.error("--context must be >= 1")
    if not 1 <= args.window <= args.context:
        ap.error("--window must be in 1..--context")
    if args.steps < 1 or args.synced_steps < 1 or args.warmup < 3:
        ap.error("--steps and --synced-steps must be >= 1, --warmup >= 3 (CUDA-graph trees "
                 "warm up, record, then replay)")
    return args


def model_shape(name):
    return SMOKE_MODEL if name == "smoke" else MODELS[name]


def q_dim(s):
    return s["heads"] * HEAD_DIM


def kv_dim(s):
    return s["kv_heads"] * HEAD_DIM


def parameter_count(s):
    """As ModelConfig::parameter_count (untied embeddings)."""
    attention = s["hidden"] * (q_dim(s) + 2 * kv_dim(s)) + q_dim(s) * s["hidden"] + (
        q_dim(s) + 2 * kv_dim(s) if s["qkv_bias"] else 0)
    per_layer = attention + 3 * s["hidden"] * s["inter"] + 2 * s["hidden"]
    return 2 * s["vocab"] * s["hidden"] + s["layers"] * per_layer + s["hidden"]


def streamed_weight_bytes(s):
    """What a decode step must read of the weights: all but the embedding table (one row per
    sequence), as CudaModel::streamed_weight_bytes."""
    return BF16_BYTES * (parameter_count(s) - s["vocab"] * s["hidden"])


def kv_bytes_per_token(s):
    return 2 * s["layers"] * kv_dim(s) * BF16_BYTES


def step_bytes(s, batch, context):
    """As l2kv bench's steady point: weights plus K and V of batch x (context + 1) tokens."""
    return streamed_weight_bytes(s) + kv_bytes_per_token(s) * batch * (context + 1.0)


def first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def build_decoder(torch, shape, device):
    """The decoder as an nn.Module; the decode state (KV cache, tokens, position, RoPE tables)
    lives in buffers that setup_cache() (re)allocates, so torch.compile treats every tensor the
    step touches as a static input and the CUDA graph needs no input copies."""
    nn, F = torch.nn, torch.nn.functional
    s = shape
    bf16 = torch.bfloat16

    def weight(*size):
        return nn.Parameter(torch.randn(*size, dtype=bf16, device=device) * WEIGHT_STD,
                            requires_grad=False)

    def norm_weight():
        # Near one, not exactly: random, as the rest.
        return nn.Parameter(1 + torch.randn(s["hidden"], dtype=bf16, device=device) * WEIGHT_STD,
                            requires_grad=False)

    def rms_norm(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + s["eps"])).to(bf16) * w

    def rope(x, cos, sin):
        # Halves rotated as transformers' Llama does; x [B, heads, 1, D], cos/sin [1, D/2].
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(bf16)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.mlp_norm = norm_weight(), norm_weight()
            self.wqkv = weight(q_dim(s) + 2 * kv_dim(s), s["hidden"])  # fused, as gpt-fast
            self.bqkv = weight(q_dim(s) + 2 * kv_dim(s)) if s["qkv_bias"] else None
            self.wo = weight(s["hidden"], q_dim(s))
            self.w_gate_up = weight(2 * s["inter"], s["hidden"])  # gate rows, then up rows
            self.w_down = weight(s["hidden"], s["inter"])

        def setup_cache(self, batch, context):
            size = (batch, s["kv_heads"], context, HEAD_DIM)
            self.register_buffer("k_cache", torch.empty(size, dtype=bf16, device=device),
                                 persistent=False)
            self.register_buffer("v_cache", torch.empty(size, dtype=bf16, device=device),
                                 persistent=False)
            self.k_cache.normal_()  # the prefilled context: random, never zeros
            self.v_cache.normal_()

        def forward(self, x, pos, cos, sin, mask):
            batch = x.shape[0]
            qkv = F.linear(rms_norm(x, self.attn_norm), self.wqkv, self.bqkv)
            q, k, v = qkv.split([q_dim(s), kv_dim(s), kv_dim(s)], dim=-1)
            q = rope(q.view(batch, 1, s["heads"], HEAD_DIM).transpose(1, 2), cos, sin)
            k = rope(k.view(batch, 1, s["kv_heads"], HEAD_DIM).transpose(1, 2), cos, sin)
            v = v.view(batch, 1, s["kv_heads"], HEAD_DIM).transpose(1, 2)
            self.k_cache.index_copy_(2, pos, k)
            self.v_cache.index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask,
                                               enable_gqa=s["heads"] != s["kv_heads"])
            x = x + F.linear(o.transpose(1, 2).reshape(batch, 1, q_dim(s)), self.wo)
            gate, up = F.linear(rms_norm(x, self.mlp_norm), self.w_gate_up).chunk(2, dim=-1)
            return x + F.linear(F.silu(gate) * up, self.w_down)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = weight(s["vocab"], s["hidden"])
            self.layers = nn.ModuleList(Layer() for _ in range(s["layers"]))
            self.final_norm = norm_weight()
            self.lm_head = weight(s["vocab"], s["hidden"])
            self.causal_mask, self.first_slot, self.last_slot = False, 0, 0

        def setup_cache(self, batch, context, window, causal_mask, seed):
            """Static cache of `context` slots, prefilled; positions cycle over the last
            `window` slots."""
            torch.manual_seed(seed)
            for layer in self.layers:
                layer.setup_cache(batch, context)
            self.first_slot, self.last_slot = context - window, context - 1
            self.causal_mask = causal_mask
            inv = 1.0 / (s["theta"] ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32,
                                                     device=device) / HEAD_DIM))
            angles = torch.outer(torch.arange(context, dtype=torch.float32, device=device), inv)
            buffers = {
                "cos": angles.cos(), "sin": angles.sin(),
                "slots": torch.arange(context, device=device),
                "tokens": torch.randint(1, s["vocab"], (batch, 1), device=device),
                "pos": torch.tensor([self.first_slot], dtype=torch.int64, device=device),
            }
            for name, t in buffers.items():
                self.register_buffer(name, t, persistent=False)

        def release_cache(self):
            # The buffers are the decode state only (weights are parameters).
            for module in self.modules():
                module._buffers.clear()

        def decode(self):
            """One decode step, all on the device: reads tokens and pos, writes K/V at pos,
            the next tokens (greedy; also returned) and the next pos."""
            pos = self.pos
            cos, sin = self.cos[pos], self.sin[pos]
            mask = (self.slots <= pos).view(1, 1, 1, -1) if self.causal_mask else None
            x = F.embedding(self.tokens, self.embed)
            for layer in self.layers:
                x = layer(x, pos, cos, sin, mask)
            logits = F.linear(rms_norm(x, self.final_norm), self.lm_head).float()
            next_tokens = logits.argmax(dim=-1)
            self.tokens.copy_(next_tokens)
            after = pos + 1
            self.pos.copy_(torch.where(after > self.last_slot, self.first_slot, after))
            return next_tokens

    return Decoder()


def classify_launches(averages, steps):
    """From torch.profiler's key_averages() over `steps` steps: (verdict, counts). The verdict
    is True where each step is one graph launch (cudaGraphLaunch, or the driver's
    cuGraphLaunch) and no kernel launch (runtime or driver, cuBLAS or Triton), False otherwise,
    None where no launch of any kind was recorded (nothing checked)."""
    graph_launches = kernel_launches = memcpys = kernels = 0
    kernel_us = {}
    for e in averages:
        name = e.key
        if "GraphLaunch" in name:
            graph_launches += e.count
        elif "LaunchKernel" in name or "LaunchCooperativeKernel" in name:
            kernel_launches += e.count
        elif "Memcpy" in name or "Memset" in name:
            memcpys += e.count
        elif str(getattr(e, "device_type", "")).endswith("CUDA"):
            kernels += e.count
            us = getattr(e, "device_time_total", None)
            if us is None:
                us = getattr(e, "cuda_time_total", 0)
            kernel_us[name] = us / steps
    top = sorted(kernel_us.items(), key=lambda kv: -kv[1])[:8]
    counts = {
        "profiled_steps": steps,
        "graph_launches_per_step": graph_launches / steps,
        "kernel_launches_per_step": kernel_launches / steps,
        "memcpy_memset_per_step": memcpys / steps,
        # 0 where the profiler does not trace kernels inside graph replays.
        "kernels_per_step": kernels / steps,
        "top_kernels_us_per_step": {k: round(v, 1) for k, v in top},
    }
    if graph_launches == 0 and kernel_launches == 0:
        return None, counts
    return graph_launches == steps and kernel_launches == 0, counts


def decode_step(model):
    """The compiled function, as gpt-fast's decode_one_token: it returns the next tokens (the
    callers drop them; the buffer feeds the next step)."""
    return model.decode()


class Peer:
    """Everything touching torch; one model at a time, one compile per batch."""

    def __init__(self, args):
        import torch
        version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
        if version < (2, 5):  # SDPA's enable_gqa
            raise RuntimeError(f"torch {torch.__version__}: the compiled-PyTorch peer needs "
                               f"torch 2.5 or newer")
        import torch._dynamo
        import torch._inductor.config
        self.torch, self.args = torch, args
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: the compiled-PyTorch peer needs a GPU")
        torch._inductor.config.coordinate_descent_tuning = not args.no_coordinate_descent
        if hasattr(torch._inductor.config.triton, "unique_kernel_names"):
            torch._inductor.config.triton.unique_kernel_names = True  # names in the profile
        # CUPTI initialized before any graph is captured, so that the profiler sees the kernels
        # inside graph replays (as gpt-fast does before profiling).
        try:
            from torch.profiler._utils import _init_for_cuda_graphs
            _init_for_cuda_graphs()
        except ImportError:
            pass
        self.model = None

    def describe(self):
        t = self.torch
        inductor = t._inductor.config
        return {
            "peer": f"compiled PyTorch {t.__version__} (gpt-fast-style decoder, bf16, "
                    f"torch.compile reduce-overhead fullgraph"
                    f"{', coordinate descent' if inductor.coordinate_descent_tuning else ''})",
            "card": t.cuda.get_device_name(),
            "torch": t.__version__,
            "cuda": t.version.cuda,
        }

    def measure_ceiling(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from transformers_peer import measure_read_ceiling
        return measure_read_ceiling(self.torch)

    def build(self, name):
        self.release_model()
        self.torch.manual_seed(self.args.seed)
        with self.torch.no_grad():
            self.model = build_decoder(self.torch, model_shape(name), "cuda").eval()
        counted = sum(p.numel() for p in self.model.parameters())
        expected = parameter_count(model_shape(name))
        if counted != expected:
            raise RuntimeError(f"decoder has {counted} parameters, l2kv's shape {expected}")

    def release_point_state(self):
        t = self.torch
        t._dynamo.reset()  # the compiled step
        try:  # its CUDA-graph tree and memory pool (reset() frees them too in recent versions)
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees
            reset_cudagraph_trees()
        except ImportError:
            pass
        if self.model is not None:
            self.model.release_cache()
        t.cuda.synchronize()
        t.cuda.empty_cache()

    def release_model(self):
        self.release_point_state()
        self.model = None
        self.torch.cuda.empty_cache()

    def timed_steps(self, step, n, synced):
        t = self.torch
        events = [(t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        t.cuda.synchronize()
        for start, stop in events:
            start.record()
            step(self.model)
            stop.record()
            if synced:
                stop.synchronize()
        t.cuda.synchronize()
        return [start.elapsed_time(stop) for start, stop in events]

    def graph_check(self, step):
        """Profiles a few steady steps: each must be one cudaGraphLaunch and no kernel launch.
        True or False, or None where the profiler recorded no launch at all."""
        t = self.torch
        from torch.profiler import ProfilerActivity, profile
        t.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(PROFILED_STEPS):
                step(self.model)
            t.cuda.synchronize()
        return classify_launches(prof.key_averages(), PROFILED_STEPS)

    def eager_check(self, step):
        """One compiled step against the same step run eagerly from the same state: the K/V
        written at pos (first and last layer), the next tokens and the next pos."""
        t, m = self.torch, self.model
        pos = m.pos.clone()
        slot = int(pos.item())
        saved = [(layer.k_cache[:, :, slot].clone(), layer.v_cache[:, :, slot].clone())
                 for layer in m.layers]
        tokens = m.tokens.clone()

        def run(fn):
            m.tokens.copy_(tokens)
            m.pos.copy_(pos)
            for layer, (k, v) in zip(m.layers, saved):
                layer.k_cache[:, :, slot] = k
                layer.v_cache[:, :, slot] = v
            fn(m)
            t.cuda.synchronize()
            kv = [(layer.k_cache[:, :, slot].float().clone(), layer.v_cache[:, :, slot].float().clone())
                  for layer in (m.layers[0], m.layers[-1])]
            return kv, m.tokens.clone(), m.pos.clone()

        kv_eager, tok_eager, pos_eager = run(decode_step)
        kv_graph, tok_graph, pos_graph = run(step)

        def rel(a, b):
            return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-6)).item()
                       for x, y in zip(a, b))

        first, last = rel(kv_graph[0], kv_eager[0]), rel(kv_graph[1], kv_eager[1])
        check = {
            "first_layer_kv_max_rel_diff": first,
            "last_layer_kv_max_rel_diff": last,
            "next_tokens_equal": f"{int((tok_graph == tok_eager).sum())} of {tok_eager.numel()}",
            "next_pos_equal": bool((pos_graph == pos_eager).all()),
        }
        ok = first <= FIRST_LAYER_KV_TOLERANCE and check["next_pos_equal"]
        return ok, check

    def measure(self, name, batch, log):
        t, args = self.torch, self.args
        shape = model_shape(name)
        self.release_point_state()
        cache_bytes = kv_bytes_per_token(shape) * batch * args.context
        free, _ = t.cuda.mem_get_info()
        if cache_bytes + MEMORY_MARGIN_BYTES > free:
            raise RuntimeError(f"static KV cache of {cache_bytes / 2**30:.1f} GiB does not fit in "
                               f"{free / 2**30:.1f} GiB free (less --batches or --context)")
        row = {}
        skips_before = self.cudagraph_skips()
        with t.no_grad():
            self.model.setup_cache(batch, args.context, args.window, args.causal_mask,
                                   args.seed + batch)
            step = t.compile(decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            compile_start = time.perf_counter()
            for i in range(args.warmup):
                step(self.model)
                if i == 0:
                    t.cuda.synchronize()
                    row["compile_s"] = time.perf_counter() - compile_start
                    log(f"peer {name} B={batch}: compiled in {row['compile_s']:.0f} s", flush=True)
            t.cuda.synchronize()
            pos_before = int(self.model.pos.item())
            back_to_back = self.timed_steps(step, args.steps, synced=False)
            synced = self.timed_steps(step, args.synced_steps, synced=True)
            # The graph replays really advanced the state on the device.
            span = args.window
            expected = self.model.first_slot + (pos_before - self.model.first_slot +
                                                args.steps + args.synced_steps) % span
            pos_after = int(self.model.pos.item())
            try:
                graphs, row["graph_check"] = self.graph_check(step)
            except Exception as e:  # the profiler failing says nothing about the graphs
                graphs, row["graph_check"] = None, {"error": first_line(e)}
            eager_ok, row["eager_check"] = self.eager_check(step)
        skips = self.cudagraph_skips() - skips_before
        if skips:
            graphs = False
        step_ms = statistics.median(back_to_back)
        nbytes = step_bytes(shape, batch, args.context)
        row.update({
            "step_ms": step_ms,
            "synced_step_ms": statistics.median(synced),
            "mean_step_ms": sum(back_to_back) / len(back_to_back),
            "output_tokens_per_s": batch / (step_ms * 1e-3),
            "bytes_per_step": nbytes,
            "mbu": nbytes / (step_ms * 1e-3 * self.ceiling),
            "graphs": graphs,
            "state_advanced": pos_after == expected,
            "eager_check_ok": eager_ok,
            "cudagraph_skips": skips,
        })
        return row

    def cudagraph_skips(self):
        from torch._dynamo.utils import counters
        return int(counters["inductor"]["cudagraph_skips"])


def run(args, peer, log=print):
    started = time.perf_counter()
    meta = peer.describe()
    meta.update({
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3"] + sys.argv),
        "mode": "steady",
        "context": args.context,
        "window": args.window,
        "attention": "SDPA, enable_gqa, " + ("gpt-fast's boolean mask (slots <= pos)"
                                             if args.causal_mask else "whole static cache"),
        "timing": f"median of {args.steps} back-to-back steps (CUDA events around each) after "
                  f"{args.warmup} warm-up steps; synced_step_ms: median of {args.synced_steps} "
                  f"steps with a sync after each",
        "bytes_per_step": "2 x (parameters - embedding table) + K and V of batch x (context + 1) "
                          "tokens, as l2kv bench --mode steady",
    })
    if args.ceiling_gbps:
        peer.ceiling = args.ceiling_gbps * 1e9
        meta["ceiling_source"] = "--ceiling-gbps (l2kv bench, same run)"
    else:
        peer.ceiling, meta["ceiling_source"] = peer.measure_ceiling()
    meta["ceiling_gbps"] = peer.ceiling / 1e9
    meta["points"] = points = []
    log(f"peer: {meta['peer']} on {meta['card']}; ceiling {peer.ceiling / 1e9:.0f} GB/s "
        f"({meta['ceiling_source']})", flush=True)

    def save():
        if not args.json:
            return
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, args.json)

    def over_budget():
        return args.time_budget_s and time.perf_counter() - started > args.time_budget_s

    failures = 0
    for name in args.models:
        def base(b):
            return {"mode": "steady", "model": name, "batch": b, "concurrency": b,
                    "context": args.context}

        if over_budget():
            points += [dict(base(b), skipped="time budget") for b in args.batches]
            save()
            continue
        build_start = time.perf_counter()
        try:
            peer.build(name)
        except Exception as e:  # e.g. out of memory: every point of this model says why
            msg = "model build failed: " + first_line(e)
            log(f"peer {name}: {msg}", flush=True)
            peer.release_model()
            points += [dict(base(b), error=msg) for b in args.batches]
            failures += len(args.batches)
            save()
            continue
        shape = model_shape(name)
        log(f"peer {name}: {parameter_count(shape) / 1e9:.3g} B parameters built in "
            f"{time.perf_counter() - build_start:.0f} s; {streamed_weight_bytes(shape) / 1e9:.2f} "
            f"GB of weights read per step", flush=True)
        for b in args.batches:
            row = base(b)
            if over_budget():
                log(f"peer: time budget of {args.time_budget_s:.0f} s spent; skipping B={b}",
                    flush=True)
                row["skipped"] = "time budget"
                points.append(row)
                save()
                continue
            point_start = time.perf_counter()
            log(f"peer {name} B={b} ctx={args.context}: compiling", flush=True)
            try:
                row.update(peer.measure(name, b, log))
                row["weight_bytes"] = streamed_weight_bytes(shape)
                row["seconds"] = time.perf_counter() - point_start
                g = row["graph_check"]
                verdict = {True: "one graph per step", False: "NOT ONE GRAPH PER STEP",
                           None: "UNCHECKED"}[row["graphs"]]
                counts = ("profiler failed: " + g["error"] if "error" in g else
                          f"{g['graph_launches_per_step']:g} cudaGraphLaunch, "
                          f"{g['kernel_launches_per_step']:g} kernel launches, "
                          f"{g['kernels_per_step']:g} kernels per step")
                log(f"peer {name} B={b} ctx={args.context}: step {row['step_ms']:.3f} ms "
                    f"(synced {row['synced_step_ms']:.3f}), {row['output_tokens_per_s']:.1f} tok/s, "
                    f"MBU {row['mbu']:.2f}; CUDA graph check: {counts} -> {verdict}; "
                    f"eager check {'ok' if row['eager_check_ok'] else 'FAILED'} "
                    f"(first layer K/V {row['eager_check']['first_layer_kv_max_rel_diff']:.1e}, "
                    f"tokens {row['eager_check']['next_tokens_equal']}) "
                    f"({row['seconds']:.0f} s)", flush=True)
                if row["graphs"] is False:
                    log(f"peer {name} B={b}: WARNING: CUDA graphs NOT applied as one launch per "
                        f"step (cudagraph skips: {row['cudagraph_skips']}); graphs: false in the "
                        f"JSON", flush=True)
                elif row["graphs"] is None:
                    log(f"peer {name} B={b}: WARNING: CUDA graphs could not be checked; graphs: "
                        f"null in the JSON", flush=True)
                if not (row["state_advanced"] and row["eager_check_ok"]):
                    failures += 1
                    log(f"peer {name} B={b}: ERROR: the compiled step does not match the eager "
                        f"step or did not advance its position: {row['eager_check']}", flush=True)
            except Exception as e:  # OOM and the like: recorded, and the grid goes on
                row["error"] = first_line(e)
                row["seconds"] = time.perf_counter() - point_start
                failures += 1
                log(f"peer {name} B={b} ctx={args.context}: {row['error']}", flush=True)
            peer.release_point_state()
            points.append(row)
            save()
        peer.release_model()
    save()
    measured = sum("step_ms" in p for p in points)
    log(f"peer: {measured} of {len(points)} points in {time.perf_counter() - started:.0f} s"
        f"{'; JSON in ' + args.json if args.json else ''}", flush=True)
    if args.smoke:
        ok = failures == 0 and all(p.get("graphs") for p in points)
        log(f"peer smoke: {'passed' if ok else 'FAILED'}", flush=True)
        meta["smoke_passed"] = ok
    return meta, failures


def main():
    args = parse_args()
    try:
        peer = Peer(args)
    except RuntimeError as e:
        sys.exit(f"compiled_torch_peer: {e}")
    meta, failures = run(args, peer)
    if args.smoke and not meta["smoke_passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

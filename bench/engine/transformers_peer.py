#!/usr/bin/env python3
"""PyTorch + transformers peer of `l2kv bench`: decodes the same synthetic model shapes (random
bf16 weights built on the GPU) at the same batch and lengths with `model.generate(...,
cache_implementation="static")`, which in transformers 5 compiles the decode step itself
(torch.compile, CUDA graphs).

Timing: t(n) = wall time of generate with max_new_tokens = min_new_tokens = n, CUDA-synchronized
on both sides. t(1) is prefill plus the first token, so decode tokens/s = B (N - 1) / (t(N) - t(1))
holds no prefill; output tokens/s = B N / t(N) is end to end, as l2kv's output_tokens_per_s.
MBU = bytes one decode step must read (all weights, 2 bytes per parameter, plus K and V of the
mean context B (input_len + N/2)) over step time x the streaming-read ceiling (--ceiling-gbps,
as measured by l2kv in the same run, else measured here with PyTorch).

Writes the JSON after every point, so an interrupted run keeps what it measured."""
import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time

# The four synthetic shapes of l2kv (HF config.json values of the published checkpoints).
MODELS = {
    "llama2-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                      intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, rope_theta=10000.0, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=131072,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192},
                      rms_norm_eps=1e-5, tie_word_embeddings=False),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, rope_theta=1000000.0, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False),
    "qwen2.5-14b": dict(model_type="qwen2", vocab_size=152064, hidden_size=5120,
                        intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                        num_key_value_heads=8, rope_theta=1000000.0, max_position_embeddings=32768,
                        rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False),
}
CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}
BF16_BYTES = 2
CEILING_TENSOR_BYTES = 4 << 30
# Decode tokens generated while warming up: enough for the compile and for the CUDA-graph
# trees to record and then replay.
WARMUP_TOKENS = 16


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 128])
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", nargs="+", type=int, default=[1024])
    ap.add_argument("--ceiling-gbps", type=float,
                    help="streaming-read ceiling in GB/s (l2kv bench's, same run); "
                         "measured here when absent")
    ap.add_argument("--prefill-reps", type=int, default=3,
                    help="t(1) is the median of this many runs (t(N) is timed once)")
    ap.add_argument("--time-budget-s", type=float,
                    help="skip the points left once this many seconds have passed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be >= 1")
    if any(n < 2 for n in args.output_len):
        ap.error("--output-len must be >= 2 (decode time is t(N) - t(1))")
    if args.input_len < 1:
        ap.error("--input-len must be >= 1")
    return args


def head_dim(shape):
    return shape["hidden_size"] // shape["num_attention_heads"]


def kv_bytes_per_token(shape):
    """K and V of one token over all layers, bf16."""
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim(shape) * BF16_BYTES


def decode_step_bytes(weight_bytes, shape, batch, input_len, output_len):
    """Bytes one decode step must read: every weight once, plus K and V at the mean context."""
    mean_context = input_len + output_len / 2
    return weight_bytes + kv_bytes_per_token(shape) * batch * mean_context


def point_metrics(batch, output_len, t_first, t_all, step_bytes, ceiling_bytes_per_s):
    """Throughputs from t(1) (prefill + first token) and t(N) (whole generate)."""
    decode_s = t_all - t_first
    if decode_s <= 0:
        raise RuntimeError(f"t(N) = {t_all:.3f} s is not above t(1) = {t_first:.3f} s")
    step_s = decode_s / (output_len - 1)
    return {
        "decode_tokens_per_s": batch * (output_len - 1) / decode_s,
        "output_tokens_per_s": batch * output_len / t_all,
        "tpot_ms": step_s * 1e3,
        "mbu": step_bytes / (step_s * ceiling_bytes_per_s),
        "prefill_s": t_first,
        "decode_s": decode_s,
    }


def first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def measure_read_ceiling(torch):
    """Streaming-read bandwidth with PyTorch ops: a sum over a 4 GiB bf16 tensor (reads only)
    and a copy of 2 GiB (reads and writes; both directions counted); the better one."""
    t = torch
    x = t.ones(CEILING_TENSOR_BYTES // BF16_BYTES, dtype=t.bfloat16, device="cuda")
    half = x.numel() // 2
    src, dst = x[:half], x[half:]

    def bandwidth(fn, nbytes, reps=10):
        for _ in range(3):
            fn()
        t.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, stop = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e-3)
        return nbytes / statistics.median(times)

    read = bandwidth(lambda: x.sum(dtype=t.float32), CEILING_TENSOR_BYTES)
    copy = bandwidth(lambda: dst.copy_(src), CEILING_TENSOR_BYTES)
    del x, src, dst
    t.cuda.empty_cache()
    if read >= copy:
        return read, f"torch sum over 4 GiB bf16 (copy 2 GiB: {copy / 1e9:.0f} GB/s)"
    return copy, f"torch copy_ of 2 GiB, read + write counted (sum over 4 GiB: {read / 1e9:.0f} GB/s)"


class Peer:
    """Builds each model once and measures its points; everything touching torch is here."""

    def __init__(self, args):
        import torch
        import torch._dynamo
        import transformers
        self.torch = torch
        self.transformers = transformers
        self.args = args
        self.model = None
        # Every (batch, cache length) is a new shape for the compiled decode step; the dynamo
        # cache is reset between points, and the limit raised so that no point falls back to
        # eager if it is not.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        # Newer transformers pin the static cache length with generation_config.max_cache_len;
        # with it a short warm-up compiles the very shapes the timed runs use.
        gen_cfg = transformers.GenerationConfig()
        self.pins_cache_len = hasattr(gen_cfg, "max_cache_len")

    def describe(self):
        t = self.torch
        return {
            "peer": f"transformers {self.transformers.__version__} + torch {t.__version__}, "
                    f"bf16, static cache",
            "card": t.cuda.get_device_name(),
        }

    def measure_ceiling(self):
        return measure_read_ceiling(self.torch)

    def build(self, name):
        t, tf = self.torch, self.transformers
        shape = dict(MODELS[name])
        cfg = getattr(tf, CONFIG_CLASSES[shape.pop("model_type")])(**shape)
        model = None
        # transformers 5 names the argument dtype; torch_dtype is the older name.
        for key in ("dtype", "torch_dtype"):
            try:
                with t.device("cuda"):
                    model = tf.AutoModelForCausalLM.from_config(cfg, **{key: t.bfloat16})
                break
            except TypeError:
                continue
        if model is None:
            raise RuntimeError("AutoModelForCausalLM.from_config takes neither dtype nor torch_dtype")
        model = model.to(t.bfloat16).eval()
        with t.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:  # matrices and embeddings; norm weights keep their ones
                    p.normal_(0.0, 0.02)
        params = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight.numel()
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
        return model, params, embed, rope

    def release_point_state(self):
        t = self.torch
        if self.model is not None and hasattr(self.model, "_cache"):
            del self.model._cache  # generate's persistent static cache
        t._dynamo.reset()  # compiled decode graphs and their CUDA-graph memory
        gc.collect()
        t.cuda.empty_cache()

    def release_model(self):
        self.release_point_state()
        self.model = None
        gc.collect()
        self.torch.cuda.empty_cache()

    def generate_seconds(self, input_ids, new_tokens, cache_len):
        t = self.torch
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      cache_implementation="static", pad_token_id=0,
                      attention_mask=t.ones_like(input_ids))
        if self.pins_cache_len:
            kwargs["max_cache_len"] = cache_len
        t.cuda.synchronize()
        start = time.perf_counter()
        out = self.model.generate(input_ids, **kwargs)
        t.cuda.synchronize()
        seconds = time.perf_counter() - start
        produced = out.shape[1] - input_ids.shape[1]
        if produced != new_tokens:
            raise RuntimeError(f"generate produced {produced} tokens, not {new_tokens}")
        return seconds

    def measure(self, name, shape, weight_bytes, batch, output_len, ceiling):
        t, args = self.torch, self.args
        self.release_point_state()
        cache_len = args.input_len + output_len
        cache_bytes = kv_bytes_per_token(shape) * batch * cache_len
        free, _ = t.cuda.mem_get_info()
        if cache_bytes > free - (1 << 30):
            raise RuntimeError(f"static KV cache of {cache_bytes / 2**30:.1f} GiB does not fit in "
                               f"{free / 2**30:.1f} GiB free")
        gen = t.Generator(device="cuda").manual_seed(args.seed + batch)
        # Ids from 1 up: 0 is the pad id.
        input_ids = t.randint(1, shape["vocab_size"], (batch, args.input_len), device="cuda",
                              generator=gen)
        # Warm-up = the compile. Where the cache length can be pinned, a short run compiles the
        # shapes of the timed runs; otherwise only a full-length run creates the cache they reuse.
        warm_tokens = min(output_len, WARMUP_TOKENS) if self.pins_cache_len else output_len
        self.generate_seconds(input_ids, warm_tokens, cache_len)
        compiled = hasattr(self.model, "_compiled_call")
        # t(N) before t(1): t(1) then reuses the cache of t(N), so both prefills see one cache size.
        t_all = self.generate_seconds(input_ids, output_len, cache_len)
        t_first = statistics.median(self.generate_seconds(input_ids, 1, cache_len)
                                    for _ in range(args.prefill_reps))
        step_bytes = decode_step_bytes(weight_bytes, shape, batch, args.input_len, output_len)
        row = point_metrics(batch, output_len, t_first, t_all, step_bytes, ceiling)
        row["compiled"] = compiled
        return row


def run(args, peer, log=print):
    started = time.perf_counter()
    meta = peer.describe()
    meta.update({
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3"] + sys.argv),
        "input_len": args.input_len,
        "bytes_per_step": "2 x parameter count (embedding table included) + K and V of "
                          "B x (input_len + output_len / 2) tokens",
    })
    if args.ceiling_gbps:
        ceiling = args.ceiling_gbps * 1e9
        meta["ceiling_source"] = "--ceiling-gbps (l2kv bench, same run)"
    else:
        ceiling, meta["ceiling_source"] = peer.measure_ceiling()
    meta["ceiling_gbps"] = ceiling / 1e9
    meta["points"] = points = []
    log(f"peer: {meta['peer']} on {meta['card']}; ceiling {ceiling / 1e9:.0f} GB/s "
        f"({meta['ceiling_source']})", flush=True)

    def save():
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, args.json)

    over_budget = False
    for name in args.models:
        shape = MODELS[name]
        grid = [(b, n) for b in args.batches for n in args.output_len]

        def base(b, n):
            return {"model": name, "batch": b, "input_len": args.input_len, "output_len": n}

        if not over_budget and args.time_budget_s and time.perf_counter() - started > args.time_budget_s:
            over_budget = True
            log(f"peer: time budget of {args.time_budget_s:.0f} s spent; skipping the points left",
                flush=True)
        if over_budget:
            points += [dict(base(b, n), skipped="time budget") for b, n in grid]
            save()
            continue
        build_start = time.perf_counter()
        try:
            peer.model, params, embed, rope = peer.build(name)
        except Exception as e:  # e.g. out of memory: every point of this model says why
            msg = "model build failed: " + first_line(e)
            log(f"peer {name}: {msg}", flush=True)
            peer.release_model()
            points += [dict(base(b, n), error=msg) for b, n in grid]
            save()
            continue
        # A decode step reads B rows of the embedding table, not all of it (untied models);
        # l2kv counts the bytes that must move the same way.
        tied = bool(getattr(peer.model.config, "tie_word_embeddings", False))
        weight_bytes = BF16_BYTES * (params if tied else params - embed)
        meta.setdefault("attention", getattr(peer.model.config, "_attn_implementation", None))
        meta.setdefault("compile_config", str(getattr(peer.model.generation_config, "compile_config", None)))
        log(f"peer {name}: {params / 1e9:.2f} B parameters built in "
            f"{time.perf_counter() - build_start:.0f} s (rope {rope})", flush=True)
        for b, n in grid:
            row = base(b, n)
            if not over_budget and args.time_budget_s and time.perf_counter() - started > args.time_budget_s:
                over_budget = True
                log(f"peer: time budget of {args.time_budget_s:.0f} s spent; skipping the points left",
                    flush=True)
            if over_budget:
                row["skipped"] = "time budget"
                points.append(row)
                continue
            point_start = time.perf_counter()
            try:
                row.update(peer.measure(name, shape, weight_bytes, b, n, ceiling))
                row["weight_bytes"] = weight_bytes
                row["embedding_bytes"] = BF16_BYTES * embed
                row["seconds"] = time.perf_counter() - point_start
                log(f"peer {name} B={b} in={args.input_len} out={n}: "
                    f"decode {row['decode_tokens_per_s']:.0f} tok/s, "
                    f"output {row['output_tokens_per_s']:.0f} tok/s, "
                    f"TPOT {row['tpot_ms']:.2f} ms, MBU {row['mbu']:.2f}, "
                    f"prefill {row['prefill_s']:.2f} s"
                    f"{'' if row['compiled'] else ', NOT compiled'} ({row['seconds']:.0f} s)",
                    flush=True)
            except Exception as e:  # OOM and the like: recorded, and the grid goes on
                row["error"] = first_line(e)
                row["seconds"] = time.perf_counter() - point_start
                log(f"peer {name} B={b} in={args.input_len} out={n}: {row['error']}", flush=True)
                peer.release_point_state()
            points.append(row)
            save()
        peer.release_model()
        save()
    save()
    log(f"peer: {sum('decode_tokens_per_s' in p for p in points)} of {len(points)} points in "
        f"{time.perf_counter() - started:.0f} s; JSON in {args.json}", flush=True)
    return meta


def main():
    args = parse_args()
    peer = Peer(args)
    peer.torch.manual_seed(args.seed)
    run(args, peer)


if __name__ == "__main__":
    main()

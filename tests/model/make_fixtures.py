#!/usr/bin/env python3
"""Creates l2kv's tiny model fixtures with Hugging Face transformers (run where torch and
transformers exist, e.g. the GPU machine): a Llama-2-style MHA model (fp16), a Llama-3-style
GQA model with llama3 RoPE scaling (bf16) and a Qwen2 model with QKV bias and tied embeddings
(bf16, sharded with model.safetensors.index.json), a Llama-3-style GQA model with head_dim
128 (the head size of every benchmarked model; bf16) that also gets a prompt longer than 1024
tokens, and a Qwen3 model (per-head q/k RMSNorm before RoPE, head_dim 128 given in the config
while hidden / heads is 64, no QKV bias, tied embeddings; bf16; q/k norm weights drawn away
from 1), and a Gemma 3 text model (add_gemma3). For each, transformers' float32 logits for every position of a few prompts and a
32-token greedy continuation. The first four models are made in this order from one seed, so
adding a model at the end leaves the earlier fixtures unchanged; the later ones (SEEDS) reseed
before they are made, so --only gives them the same bytes as a full run.

Usage: make_fixtures.py [out-dir] [--only NAME ...]   (out-dir: tests/model/fixtures)
e.g.   python3 tests/model/make_fixtures.py --only qwen3-qknorm   (transformers >= 4.51)
"""
import argparse
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.manual_seed(20261126)
COMMON = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5,
              initializer_range=0.08, bos_token_id=1, eos_token_id=2)
MODELS = {
    "llama2-mha": (LlamaForCausalLM, LlamaConfig(num_key_value_heads=4, rope_theta=10000.0,
                                                 tie_word_embeddings=False, **COMMON), torch.float16, None),
    "llama3-gqa": (LlamaForCausalLM, LlamaConfig(num_key_value_heads=2, rope_theta=500000.0,
                                                 rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                               "original_max_position_embeddings": 64},
                                                 tie_word_embeddings=False, **COMMON), torch.bfloat16, None),
    "qwen2-tied": (Qwen2ForCausalLM, Qwen2Config(num_key_value_heads=2, rope_theta=1000000.0,
                                                 tie_word_embeddings=True, use_sliding_window=False,
                                                 **COMMON), torch.bfloat16, "1MB"),
    "llama3-hd128": (LlamaForCausalLM, LlamaConfig(num_key_value_heads=2, head_dim=128, rope_theta=500000.0,
                                                   tie_word_embeddings=False,
                                                   **{**COMMON, "max_position_embeddings": 2048}),
                     torch.bfloat16, None),
}
SEEDS = {"qwen3-qknorm": 20261203,  # models made from their own seed (see the docstring)
         "gemma3-sliding": 20261204}


def add_qwen3():
    # Imported here: transformers before 4.51 has no Qwen3, and the other fixtures need none.
    from transformers import Qwen3Config, Qwen3ForCausalLM
    MODELS["qwen3-qknorm"] = (Qwen3ForCausalLM,
                              Qwen3Config(num_key_value_heads=2, head_dim=128, rope_theta=1000000.0,
                                          attention_bias=False, tie_word_embeddings=True,
                                          use_sliding_window=False, **COMMON),
                              torch.bfloat16, None)


def add_gemma3():
    """Gemma 3 text (transformers >= 4.50): GeGLU, (1 + weight) RMSNorms before and after
    attention and the MLP, q/k norms, sliding-window layers (window 16, so the 150-token prompt
    leaves it) alternating with global ones (layer_types, or sliding_window_pattern before
    4.53), local RoPE base 10000 and a linearly scaled global one, embeddings scaled by
    sqrt(hidden), query_pre_attn_scalar, final logit soft-capping, tied embeddings."""
    try:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    except ImportError:
        return
    config = Gemma3TextConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
        rms_norm_eps=1e-6, initializer_range=0.08, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        query_pre_attn_scalar=48, sliding_window=16, rope_theta=1000000.0,
        rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
        final_logit_softcapping=30.0, attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        sliding_window_pattern=2, layer_types=["sliding_attention", "full_attention"] * 2)
    MODELS["gemma3-sliding"] = (Gemma3ForCausalLM, config, torch.bfloat16, None)


def perturb_gemma_norms(model):
    """Gemma's norms scale by (1 + weight) with the weights initialized to 0: draw every norm
    weight in [-0.5, 0.5) so the fixture tests the scaling."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape) - 0.5)


def perturb_qk_norms(model):
    """transformers initializes the q/k norm weights to 1; draw them in [0.5, 1.5) so the
    fixture tests the multiplication by the weight too."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.copy_(torch.rand(norm.weight.shape) + 0.5)


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "fixtures"))
parser.add_argument("--only", action="append", metavar="NAME",
                    help="make only this fixture (repeatable); the others are left as they are")
args = parser.parse_args()
OUT = args.out
add_qwen3()
add_gemma3()
if args.only:
    unknown = sorted(set(args.only) - set(MODELS))
    if unknown:
        parser.error(f"unknown fixture(s) {unknown}; known: {sorted(MODELS)}")
    earlier = [n for n in MODELS if n not in SEEDS]
    if any(n in earlier for n in args.only) and any(n not in args.only for n in earlier):
        # Their weights come from one random stream in order: one alone would differ.
        parser.error(f"{earlier} are made from one seed in order: make them all or none of them")
PROMPTS = [[1, 17, 300, 42, 9], torch.randint(3, 512, (17,)).tolist(), torch.randint(3, 512, (150,)).tolist()]
LONG_PROMPT_TOKENS = {"llama3-hd128": 1100}  # drawn after the model, so earlier draws stay put
STEPS = 32

for name, (cls, config, dtype, shard) in MODELS.items():
    if args.only and name not in args.only:
        continue
    if name in SEEDS:
        torch.manual_seed(SEEDS[name])
    model = cls(config)
    if name == "qwen3-qknorm":
        perturb_qk_norms(model)
    if name == "gemma3-sliding":
        perturb_gemma_norms(model)
    model = model.to(dtype)
    path = os.path.join(OUT, name)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    # The reference runs in float32 on the saved (rounded) weights, as l2kv's CPU backend does.
    ref = cls.from_pretrained(path, torch_dtype=torch.float32).eval()
    cases = []
    with torch.no_grad():
        prompts = list(PROMPTS)
        if name in LONG_PROMPT_TOKENS:
            prompts.append(torch.randint(3, 512, (LONG_PROMPT_TOKENS[name],)).tolist())
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([prompt])
            logits = ref(ids).logits[0].float().contiguous()
            logits.numpy().astype("<f4").tofile(os.path.join(path, f"reference_logits_{i}.bin"))
            seq, gaps = list(prompt), []
            for _ in range(STEPS):
                last = ref(torch.tensor([seq])).logits[0, -1].float()
                top = torch.topk(last, 2).values
                gaps.append(float(top[0] - top[1]))
                seq.append(int(last.argmax()))
            cases.append({"prompt": prompt, "logits_file": f"reference_logits_{i}.bin",
                          "logits_shape": list(logits.shape), "greedy": seq[len(prompt):],
                          "min_top2_gap": min(gaps)})
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump({"transformers_dtype": "float32", "weights_dtype": str(dtype), "cases": cases}, f, indent=1)
    print(name, sorted(os.listdir(path)), "min gap", min(c["min_top2_gap"] for c in cases))
    print(open(os.path.join(path, "config.json")).read())

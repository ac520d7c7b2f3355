#!/usr/bin/env python3
"""Creates l2kv's tiny model fixtures with Hugging Face transformers (run where torch and
transformers exist, e.g. the GPU machine): a Llama-2-style MHA model (fp16), a Llama-3-style
GQA model with llama3 RoPE scaling (bf16) and a Qwen2 model with QKV bias and tied embeddings
(bf16, sharded with model.safetensors.index.json), and a Llama-3-style GQA model with head_dim
128 (the head size of every benchmarked model; bf16) that also gets a prompt longer than 1024
tokens. For each, transformers' float32 logits for every position of a few prompts and a
32-token greedy continuation. Models are made in this order from one seed, so adding a model
at the end leaves the earlier fixtures unchanged.

Usage: make_fixtures.py <out-dir>
"""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.manual_seed(20261126)
OUT = sys.argv[1]
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
PROMPTS = [[1, 17, 300, 42, 9], torch.randint(3, 512, (17,)).tolist(), torch.randint(3, 512, (150,)).tolist()]
LONG_PROMPT_TOKENS = {"llama3-hd128": 1100}  # drawn after the model, so earlier draws stay put
STEPS = 32

for name, (cls, config, dtype, shard) in MODELS.items():
    model = cls(config).to(dtype)
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

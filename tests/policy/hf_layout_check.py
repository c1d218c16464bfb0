#!/usr/bin/env python3
"""Reads a Hugging Face model folder the way transformers does, independently of the C++ reader.

Usage: hf_layout_check.py DIR

Checks the layout transformers' from_pretrained reads (standard library only, so it runs without
torch or the safetensors package):
  - config.json: a JSON object with model_type, architectures and torch_dtype;
  - weights: model.safetensors when present (transformers looks for it first), else
    model.safetensors.index.json = {"metadata": {"total_size": N}, "weight_map": {name: shard}}
    with shards named model-0000k-of-0000n.safetensors (k = 1..n, all present), every tensor the
    index names in its shard and every tensor of a shard in the index, total_size = the bytes of
    all tensors;
  - each safetensors file: 8-byte little-endian header length, a JSON header whose __metadata__
    has format "pt" (transformers refuses other archives), F32/F16/BF16 tensors whose
    data_offsets tile the data section exactly, in order, from 0 to the end of the file.
Prints one JSON object {name: {"dtype", "shape", "sha256_f32"}} where sha256_f32 is the SHA-256
of the tensor's values as little-endian float32 (F16 and BF16 widened exactly), and exits 0; on a
layout error prints it to stderr and exits 1.
"""
import hashlib
import json
import os
import re
import struct
import sys

ELEM = {"F32": 4, "F16": 2, "BF16": 2}


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def as_f32_bytes(dtype, raw):
    if dtype == "F32":
        return raw
    n = len(raw) // 2
    if dtype == "F16":
        values = struct.unpack("<%de" % n, raw)
        return struct.pack("<%df" % n, *values)
    # BF16: the upper 16 bits of a float32.
    halves = struct.unpack("<%dH" % n, raw)
    return struct.pack("<%dI" % n, *[h << 16 for h in halves])


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail("%s: shorter than 8 bytes" % path)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != "pt":
        fail('%s: __metadata__ must hold "format": "pt" (transformers refuses others)' % path)
    body = data[8 + n :]
    out, cursor = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = e["data_offsets"]
        if begin != cursor:
            fail("%s: tensor %s starts at %d, expected %d (offsets must tile)" % (path, name, begin, cursor))
        if e["dtype"] not in ELEM:
            fail("%s: tensor %s: dtype %s" % (path, name, e["dtype"]))
        count = 1
        for d in e["shape"]:
            count *= d
        if end - begin != count * ELEM[e["dtype"]]:
            fail("%s: tensor %s: %d bytes for shape %s" % (path, name, end - begin, e["shape"]))
        out[name] = (e["dtype"], e["shape"], body[begin:end])
        cursor = end
    if cursor != len(body):
        fail("%s: data section has %d bytes, tensors cover %d" % (path, len(body), cursor))
    return out


def read_sharded(folder):
    index_path = os.path.join(folder, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    total = index.get("metadata", {}).get("total_size")
    weight_map = index.get("weight_map")
    if not isinstance(total, int) or not isinstance(weight_map, dict):
        fail("%s: needs metadata.total_size (int) and weight_map (object)" % index_path)
    shards = sorted(set(weight_map.values()))
    pattern = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
    count = len(shards)
    for k, shard in enumerate(shards, start=1):
        m = pattern.match(shard)
        if not m or int(m.group(1)) != k or int(m.group(2)) != count:
            fail("%s: shard %s, expected model-%05d-of-%05d.safetensors" % (index_path, shard, k, count))
    tensors, size = {}, 0
    for shard in shards:
        for name, t in read_safetensors(os.path.join(folder, shard)).items():
            if weight_map.get(name) != shard:
                fail("%s: tensor %s is in %s but the index says %s" % (index_path, name, shard, weight_map.get(name)))
            tensors[name] = t
            size += len(t[2])
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        fail("%s: tensors not in their shards: %s" % (index_path, missing))
    if size != total:
        fail("%s: total_size %d, tensors hold %d bytes" % (index_path, total, size))
    return tensors


def main():
    folder = sys.argv[1]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    for key in ("model_type", "architectures", "torch_dtype"):
        if key not in config:
            fail("config.json: missing %s" % key)
    single = os.path.join(folder, "model.safetensors")
    tensors = read_safetensors(single) if os.path.exists(single) else read_sharded(folder)
    report = {}
    for name, (dtype, shape, raw) in tensors.items():
        report[name] = {
            "dtype": dtype,
            "shape": shape,
            "sha256_f32": hashlib.sha256(as_f32_bytes(dtype, raw)).hexdigest(),
        }
    json.dump(report, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()

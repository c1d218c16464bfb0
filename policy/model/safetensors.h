// Minimal safetensors reader/writer (https://github.com/huggingface/safetensors format):
// 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, raw data.
//
// Thread safety: both functions keep no state; reads may run at once, a write races with anything
// else on the same path. Ownership: read_safetensors returns new tensors owned by the caller.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace rlhf::policy {

// Reads every tensor as float32 (F32, F16, BF16 accepted). Throws rlhf::Error naming the file and
// tensor on truncation, bad header, unknown dtype or out-of-range offsets.
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path);

// Writes float32 tensors (contiguous copies), names sorted, atomically. Throws rlhf::Error naming
// the path when it cannot be written.
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rlhf::policy

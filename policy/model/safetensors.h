// Minimal safetensors reader/writer (https://github.com/huggingface/safetensors format):
// 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, raw data.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace rlhf::policy {

// Reads every tensor as float32 (F32, F16, BF16 accepted). Throws rlhf::Error naming the file and
// tensor on truncation, bad header, unknown dtype or out-of-range offsets.
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path);

// Writes float32 tensors (contiguous copies), names sorted, atomically.
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rlhf::policy

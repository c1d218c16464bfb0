// Checkpoints. One folder layout for both native and Hugging Face use:
//   config.json        Hugging Face config (model_type llama, mistral, qwen2 or qwen3; the keys
//                      read and refused: docs/model_families.md)
//   model.safetensors  weights, LLaMA tensor names (F32 when we write)
//   checkpoint.pb      native only: CheckpointMeta (config message, tokenizer hash, kind, step)
// A folder without checkpoint.pb is a Hugging Face import (F32/F16/BF16 accepted).
//
// Errors: rlhf::Error naming the folder or file, the field or tensor, and what was expected (as
// each function says); write failures name the path (common/files.h).
// Thread safety: saving reads the model's weights, so no thread may train that model meanwhile;
// loads of different folders may run at once. Two writers of one folder race (the last rename
// wins). Ownership: LoadedModel.model is a new model owned by the caller (a libtorch handle).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

#include "policy/model/model.h"

namespace rlhf::policy {

struct CheckpointInfo {
  std::string tokenizer_sha256;  // "" when unknown (e.g. HF import without tokenizer)
  std::string kind = "policy";   // "policy", "reward"
  std::string created_by;
  int64_t step = 0;
};

struct LoadedModel {
  Transformer model{nullptr};
  CheckpointInfo info;
  bool from_hf = false;  // true when the folder had no checkpoint.pb
};

// Writes the folder atomically (into <dir>.tmp-*, then rename over <dir>). Throws rlhf::Error
// naming the path that could not be written.
void save_checkpoint(Transformer& model, const std::string& dir, const CheckpointInfo& info);

// Loads a native checkpoint or a Hugging Face folder. Errors name the folder/file, the tensor,
// and expected vs found (missing folder, unsupported model_type, missing tensor, wrong shape,
// truncated safetensors, unknown dtype).
LoadedModel load_checkpoint(const std::string& dir);

// Hugging Face export: config.json + model.safetensors (F32) only, written atomically like
// save_checkpoint.
void export_hf(Transformer& model, const std::string& dir);

// Parses a Hugging Face config.json into a ModelConfig. Throws rlhf::Error naming the file and the
// key for: a model_type other than llama, mistral, qwen2, qwen3; a rope_scaling type other than
// default / llama3; a key that is neither read for the family nor known to be harmless; a key of
// the wrong type; an inconsistent configuration (ModelConfig::validate). A sliding window caps
// max_seq_len (ModelConfig::sliding_window).
ModelConfig model_config_from_hf_json(const std::string& config_json_path);

}  // namespace rlhf::policy

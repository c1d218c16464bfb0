// Checkpoints. One folder layout for both native and Hugging Face use:
//   config.json        Hugging Face config (model_type llama, mistral, qwen2 or qwen3; the keys
//                      read and refused: docs/model_families.md)
//   model.safetensors  weights, LLaMA tensor names (F32 when we write; save_checkpoint keeps BF16
//                      for matrices a model holds in bfloat16, export_hf always writes F32)
//   checkpoint.pb      native only: CheckpointMeta (config message, tokenizer hash, kind, step)
// A folder without checkpoint.pb is a Hugging Face import: F32/F16/BF16 tensors, memory-mapped,
// in one model.safetensors or in shards listed by model.safetensors.index.json (its weight_map:
// tensor name -> shard file), as transformers writes them. The files and keys export_hf writes are
// listed in docs/training.md ("Checkpoints").
//
// Errors: rlhf::Error naming the folder or file, the field or tensor, and what was expected (as
// each function says); write failures name the path (common/files.h).
// Thread safety: saving reads the model's weights, so no thread may train that model meanwhile;
// loads of different folders may run at once. Two writers of one folder race (the last rename
// wins). Ownership: LoadedModel.model is a new model owned by the caller (a libtorch handle).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

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

// How load_checkpoint stores the weights it reads.
struct LoadOptions {
  // dtype of the projection matrices (q, k, v, o, gate, up, down and an untied lm_head): kFloat
  // (the default, as before) or kBFloat16 for frozen weights used under bf16 autocast
  // (policy/runtime/device.h): each is read from the mapped file straight into bfloat16 (round to
  // nearest even from F32 / F16), so no float32 copy of them is kept, not even while the model is
  // built (Transformer's WeightDtypes). The norms, biases and the value head stay float32. Under
  // autocast a model loaded so gives the logits of the float32 model bit for bit (autocast rounds
  // the float32 matrices the same way); without autocast its forward is refused by libtorch (mixed
  // dtypes). Train such a model only through LoRA (policy/model/lora.h), which keeps its adapters
  // float32.
  torch::ScalarType matrix_dtype = torch::kFloat;
  // dtype of the token embedding table (and so of a tied lm_head): kFloat (the default) or
  // kBFloat16 for a table that stays frozen (LoRA). Its rows are widened to float32 as they enter
  // the residual stream, so unlike the matrices this rounds the model's input: logits differ from
  // the float32 table's by bfloat16 rounding (tests state the tolerance).
  torch::ScalarType embedding_dtype = torch::kFloat;
};

// Which weights store_matrices_as stores in the dtype it is given.
enum class StoredWeights {
  kMatrices,               // the projection matrices (LoadOptions::matrix_dtype names)
  kMatricesAndEmbeddings,  // and the token embedding table (a frozen one: LoRA)
};

// Stores `model`'s projection matrices (those LoadOptions::matrix_dtype names), and with
// kMatricesAndEmbeddings its token embedding table, as `dtype` (kFloat or kBFloat16; rounding to
// nearest even when narrowing), in place: the parameters keep their identity, their data is
// replaced, one tensor at a time. kFloat widens both whatever `which` says (checkpoints are
// float32). A no-op for tensors already in `dtype`. For a model loaded in float32 whose matrices
// then stay frozen (LoRA); the float32 data is freed when nothing else holds it. Throws rlhf::Error
// on another dtype.
void store_matrices_as(Transformer& model, torch::ScalarType dtype,
                       StoredWeights which = StoredWeights::kMatrices);

// The load options of a frozen base under `bf16` (dtype "bf16"): matrices and the embedding table
// in bfloat16 when `frozen_base` (LoRA), else float32 (a model trained in full).
LoadOptions frozen_base_load_options(bool bf16, bool frozen_base);

// Loads a native checkpoint or a Hugging Face folder. Errors name the folder/file, the tensor,
// and expected vs found (missing folder, unsupported model_type, missing tensor, wrong shape,
// truncated safetensors, unknown dtype, a missing shard, a tensor the index names that its shard
// lacks).
LoadedModel load_checkpoint(const std::string& dir, const LoadOptions& options = {});

// Hugging Face export options.
struct HfExportOptions {
  // Largest shard in bytes, as transformers' max_shard_size (default "5GB" = 5e9 bytes): tensors
  // are packed in model order into shards no larger than this (a tensor larger on its own gets a
  // shard of its own). One shard is written as model.safetensors; more as
  // model-00001-of-0000N.safetensors plus model.safetensors.index.json.
  uint64_t max_shard_size = 5000000000ull;
  // The folder the model was loaded from ("" = none). Its config.json keys are kept (those the
  // model's config defines are rewritten from it) and its tokenizer and generation files
  // (kHfCopiedFiles) are copied when present.
  std::string source_dir;
};

// Files export_hf copies from HfExportOptions::source_dir when present: tokenizer.json,
// tokenizer_config.json, tokenizer.model, special_tokens_map.json, generation_config.json, and the
// other files transformers' tokenizers save (added_tokens.json, vocab.json, merges.txt,
// chat_template.jinja, chat_template.json).
extern const std::vector<std::string> kHfCopiedFiles;

// Hugging Face export: config.json, the weights (F32, sharded per options), the index when
// sharded, the copied files; written atomically like save_checkpoint. Throws rlhf::Error naming
// the source file that cannot be read (source config.json not JSON) or the path not written.
void export_hf(Transformer& model, const std::string& dir, const HfExportOptions& options = {});

// A shard size as transformers' convert_file_size_to_int reads it: a byte count ("1000"), decimal
// units "KB", "MB", "GB" (10^3, 10^6, 10^9; a lower-case "b" as in "5Gb" means bits: / 8), binary
// units "KiB", "MiB", "GiB". Throws rlhf::Error "<what> = \"x\": expected ..." otherwise or when 0.
uint64_t parse_shard_size(const std::string& value, const std::string& what = "max_shard_size");

// Parses a Hugging Face config.json into a ModelConfig. Throws rlhf::Error naming the file and the
// key for: a model_type other than llama, mistral, qwen2, qwen3; a rope_scaling type other than
// default / llama3; a key that is neither read for the family nor known to be harmless; a key of
// the wrong type; an inconsistent configuration (ModelConfig::validate). A sliding window caps
// max_seq_len (ModelConfig::sliding_window).
ModelConfig model_config_from_hf_json(const std::string& config_json_path);

}  // namespace rlhf::policy

// Loading, checking and resolving the SFT config (proto::SftConfig, protobuf text format; the
// defaults are the proto2 [default]s in proto/sft.proto, and for the optimizer section the SFT
// column of proto/optimizer.proto). Functions only, thread-safe; errors are rlhf::Error.
#pragma once

#include <cstdint>
#include <string>

#include "common/text_config.h"
#include "proto/sft.pb.h"

namespace rlhf::policy {

// Parses a .pbtxt file: syntax errors and unknown fields throw "<path>:<line>:<col>: <message>",
// a field that moved (e.g. `lr`, now `optimizer { lr }`) "<path>:<line>: field 'lr' of SftConfig
// moved to 'optimizer { lr }'", bad values "<path>:<line>: field '<name>': <expected>, got
// <value>" (validate_sft_config).
proto::SftConfig load_sft_config(const std::string& path);
proto::SftConfig parse_sft_config(const std::string& text, const std::string& source);

// Checks every value; throws through `errors` (see ConfigErrors). The two-argument form names
// `source` without lines (e.g. after command-line overrides).
void validate_sft_config(const proto::SftConfig& config, const ConfigErrors& errors);
void validate_sft_config(const proto::SftConfig& config, const std::string& source);

// Checks a LoRA section (rank 0 = off: nothing else is checked); paths are "<errors' prefix>...".
void validate_lora_config(const proto::LoraConfig& lora, const ConfigErrors& errors);

// The `device` ("cpu" | "cuda" | "cuda:N") and `dtype` ("fp32" | "bf16") fields every trainer
// config has (policy/runtime/device.h), checked for syntax only: whether CUDA exists is checked
// when the stage resolves the device.
void validate_device_and_dtype(const std::string& device, const std::string& dtype,
                               const ConfigErrors& errors);
// LoRA defaults that depend on other fields (rank > 0 only): alpha = rank, targets q and v.
void resolve_lora_config(proto::LoraConfig* lora);

// The config the trainer runs with: every field with a constant default filled in
// (fill_defaults), plus the defaults that depend on other fields: format "auto" by the train
// file's extension (.jsonl / .json: "jsonl", else "text"); save_every = eval_every when unset;
// with LoRA (rank > 0) alpha = rank when unset and targets q, v when none are given; the
// optimizer section with the SFT defaults (training::resolve_optimizer_config). Left unset
// (resolved where their inputs are known): steps (unset: from epochs once the data is known),
// optimizer.warmup_steps (training::resolved_warmup_steps), seq_len (unset: the model's
// max_seq_len).
proto::SftConfig resolved_sft_config(const proto::SftConfig& config);

}  // namespace rlhf::policy

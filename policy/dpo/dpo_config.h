// Loading, checking and resolving the DPO config (proto::DpoConfig, protobuf text format; the
// defaults are the proto2 [default]s in proto/dpo.proto, and for the optimizer section the SFT
// column of proto/optimizer.proto). Functions only, thread-safe; errors are rlhf::Error.
#pragma once

#include <string>

#include "common/text_config.h"
#include "proto/dpo.pb.h"

namespace rlhf::policy::dpo {

// Parses a .pbtxt file: syntax errors and unknown fields throw "<path>:<line>:<col>: <message>",
// bad values "<path>:<line>: field '<name>': <expected>, got <value>" (validate_dpo_config).
proto::DpoConfig load_dpo_config(const std::string& path);
proto::DpoConfig parse_dpo_config(const std::string& text, const std::string& source);

// Checks every value; throws through `errors` (see ConfigErrors). The two-argument form names
// `source` without lines (e.g. after command-line overrides).
void validate_dpo_config(const proto::DpoConfig& config, const ConfigErrors& errors);
void validate_dpo_config(const proto::DpoConfig& config, const std::string& source);

// The config the trainer runs with: constant defaults filled in, save_every = eval_every when
// unset, LoRA defaults (alpha = rank, targets q, v), the optimizer section with the SFT defaults.
// Left unset: steps (from epochs once the data is known), optimizer.warmup_steps.
proto::DpoConfig resolved_dpo_config(const proto::DpoConfig& config);

}  // namespace rlhf::policy::dpo

// Loading, checking and resolving the reward training config (proto::RewardTrainConfig, text
// format; the defaults are the proto2 [default]s in proto/reward.proto).
#pragma once

#include <cstdint>
#include <string>

#include "common/text_config.h"
#include "proto/reward.pb.h"

namespace rlhf::reward {

// Parses a .pbtxt file. Syntax errors and unknown fields throw rlhf::Error
// "<path>:<line>:<col>: <message>"; bad values "<path>:<line>: field '<name>': <expected>, got
// <value>" (validate_config). Defaults are not filled in (see resolved_train_config).
proto::RewardTrainConfig load_train_config(const std::string& path);

// Same from a string (for tests); `name` stands for the path in messages.
proto::RewardTrainConfig parse_train_config(const std::string& text, const std::string& name);

// Checks every value through `errors`; the two-argument form names `source` without lines.
void validate_config(const proto::RewardTrainConfig& config, const ConfigErrors& errors);
void validate_config(const proto::RewardTrainConfig& config, const std::string& source);

// The config the trainer runs with: every field with a constant default filled in
// (fill_defaults), save_every = eval_every when unset, and with LoRA (rank > 0) alpha = rank when
// unset and targets q, v when none are given. Left unset: steps (unset: from epochs, computed by
// the trainer once the data is known) and warmup_steps (resolved_warmup_steps).
proto::RewardTrainConfig resolved_train_config(const proto::RewardTrainConfig& config);

// Warm-up steps: `warmup_steps` when set, else floor(warmup_ratio * total_steps).
int64_t resolved_warmup_steps(const proto::RewardTrainConfig& config, int64_t total_steps);

// Text format of the config (for manifests).
std::string to_text(const proto::RewardTrainConfig& config);

}  // namespace rlhf::reward

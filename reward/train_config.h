// Loading, checking and resolving the reward training config (proto::RewardTrainConfig, text
// format; the defaults are the proto2 [default]s in proto/reward.proto, and for the optimizer
// section the reward column of proto/optimizer.proto). Functions only, thread-safe; errors are
// rlhf::Error.
#pragma once

#include <cstdint>
#include <string>

#include "common/text_config.h"
#include "proto/reward.pb.h"

namespace rlhf::reward {

// Parses a .pbtxt file. Syntax errors and unknown fields throw rlhf::Error
// "<path>:<line>:<col>: <message>"; a field that moved (e.g. `lr`, now `optimizer { lr }`)
// "<path>:<line>: field 'lr' of RewardTrainConfig moved to 'optimizer { lr }'"; bad values
// "<path>:<line>: field '<name>': <expected>, got <value>" (validate_config). Defaults are not
// filled in (see resolved_train_config).
proto::RewardTrainConfig load_train_config(const std::string& path);

// Same from a string (for tests); `name` stands for the path in messages.
proto::RewardTrainConfig parse_train_config(const std::string& text, const std::string& name);

// Checks every value through `errors`; the two-argument form names `source` without lines.
void validate_config(const proto::RewardTrainConfig& config, const ConfigErrors& errors);
void validate_config(const proto::RewardTrainConfig& config, const std::string& source);

// The config the trainer runs with: every field with a constant default filled in
// (fill_defaults), save_every = eval_every when unset, with LoRA (rank > 0) alpha = rank when
// unset and targets q, v when none are given, and the optimizer section with the reward defaults
// (policy::training::resolve_optimizer_config). Left unset: steps (unset: from epochs, computed by
// the trainer once the data is known) and optimizer.warmup_steps
// (policy::training::resolved_warmup_steps).
proto::RewardTrainConfig resolved_train_config(const proto::RewardTrainConfig& config);

// Text format of the config (for manifests).
std::string to_text(const proto::RewardTrainConfig& config);

}  // namespace rlhf::reward

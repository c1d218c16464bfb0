// Loading and checking the reward training config (proto::RewardTrainConfig, text format).
#pragma once

#include <string>

#include "proto/reward.pb.h"

namespace rlhf::reward {

// Parses a .pbtxt file. Syntax errors and unknown fields throw rlhf::Error
// "<path>:<line>:<col>: <message>"; bad values throw "<path>:<line>: field '<name>': ...".
// The result is checked (validate_config) but defaults are not filled in yet.
proto::RewardTrainConfig load_train_config(const std::string& path);

// Same from a string (for tests); `name` stands for the path in messages.
proto::RewardTrainConfig parse_train_config(const std::string& text, const std::string& name);

// Fills the documented defaults into fields left 0/empty (see proto/reward.proto).
void apply_defaults(proto::RewardTrainConfig* config);

// Throws rlhf::Error naming `source` and the field for out-of-range values.
void validate_config(const proto::RewardTrainConfig& config, const std::string& source);

// Text format of the config (for manifests).
std::string to_text(const proto::RewardTrainConfig& config);

}  // namespace rlhf::reward

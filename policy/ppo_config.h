// Loading and checking the PPO config (proto::PpoConfig, protobuf text format).
#pragma once

#include <string>

#include "proto/ppo.pb.h"

namespace rlhf::policy {

// Loads <dir> with protobuf TextFormat into a PpoConfig; unknown fields and bad values are errors
// naming the file, line and column.
proto::PpoConfig load_ppo_config(const std::string& path);
// Checks ranges (batch sizes, clip ranges, ...) and throws rlhf::Error naming the field.
void validate_ppo_config(const proto::PpoConfig& config);

}  // namespace rlhf::policy

// Loading and checking the PPO config (proto::PpoConfig, protobuf text format; the defaults are the
// proto2 [default]s in proto/ppo.proto).
#pragma once

#include <string>

#include "common/text_config.h"
#include "proto/ppo.pb.h"

namespace rlhf::policy {

// Parses and checks a .pbtxt file: syntax errors and unknown fields throw
// "<path>:<line>:<col>: <message>", bad values "<path>:<line>: field '<name>': <expected>, got
// <value>" (validate_ppo_config). Reads nothing but the config file.
proto::PpoConfig load_ppo_config(const std::string& path);
proto::PpoConfig parse_ppo_config(const std::string& text, const std::string& source);

// Checks every value through `errors` (ranges, batch sizes, clip ranges, ...). Also refuses
// sampling settings the PPO math does not support: log-probs and the KL are computed from the full
// softmax at `temperature`, so top_k != 0, top_p < 1 and temperature == 0 (greedy) are errors; and
// lora.dropout > 0 (rollout log-probs are computed without dropout, so the first minibatch's ratio
// would not be 1). The one-argument form names `source` without lines.
void validate_ppo_config(const proto::PpoConfig& config, const ConfigErrors& errors);
void validate_ppo_config(const proto::PpoConfig& config, const std::string& source = "ppo config");

}  // namespace rlhf::policy

// Loading, checking and resolving the PPO config (proto::PpoConfig, protobuf text format; the
// defaults are the proto2 [default]s in proto/ppo.proto, and for the optimizer section the PPO
// column of proto/optimizer.proto). Functions only, thread-safe; errors are rlhf::Error.
#pragma once

#include <string>

#include "common/text_config.h"
#include "proto/ppo.pb.h"

namespace rlhf::policy {

// Parses and checks a .pbtxt file: syntax errors and unknown fields throw
// "<path>:<line>:<col>: <message>", a field that moved (e.g. `policy_lr`, now
// `optimizer { lr }`) "<path>:<line>: field 'policy_lr' of PpoConfig moved to 'optimizer { lr }'",
// bad values "<path>:<line>: field '<name>': <expected>, got <value>" (validate_ppo_config). Reads
// nothing but the config file.
proto::PpoConfig load_ppo_config(const std::string& path);
proto::PpoConfig parse_ppo_config(const std::string& text, const std::string& source);

// Checks every value through `errors` (ranges, batch sizes, clip ranges, ...). Also refuses
// sampling settings the PPO math does not support: log-probs and the KL are computed from the full
// softmax at `temperature`, so top_k != 0, top_p < 1 and temperature == 0 (greedy) are errors; and
// lora.dropout > 0 (rollout log-probs are computed without dropout, so the first minibatch's ratio
// would not be 1). The one-argument form names `source` without lines.
void validate_ppo_config(const proto::PpoConfig& config, const ConfigErrors& errors);
void validate_ppo_config(const proto::PpoConfig& config, const std::string& source = "ppo config");

// The config the trainer runs with: the optimizer section with PPO's defaults filled in
// (training::resolve_optimizer_config); every other field reads its proto2 [default] as it is.
proto::PpoConfig resolved_ppo_config(const proto::PpoConfig& config);

// Whether the run has a critic: advantage_estimator "gae" (PPO). The critic-free estimators
// (grpo, dr_grpo, rloo, reinforce_baseline) load, train and checkpoint no critic.
bool uses_critic(const proto::PpoConfig& config);

// Whether the update whitens the advantages over the global batch: whiten_advantages for "gae",
// always for "reinforce_baseline" (its definition), never for grpo, dr_grpo and rloo.
bool whitens_advantages(const proto::PpoConfig& config);

// Whether the critic is a value head with its own LoRA adapters on a shared frozen base: critic
// "policy_base" (the policy's base) or "reward_base" (the reward model's, shared with the teacher).
bool critic_on_shared_base(const proto::PpoConfig& config);

// The critic's adapters on a shared base: critic_lora when set, else the policy's lora when its
// rank is > 0, else rank 8 on q and v (alpha = rank, no dropout).
proto::LoraConfig critic_lora_config(const proto::PpoConfig& config);

// The critic's optimizer settings: the resolved optimizer section with lr = critic_lr.
proto::OptimizerConfig critic_optimizer_config(const proto::PpoConfig& config);

}  // namespace rlhf::policy

// The memory plan of each training stage (`rlhf sft|reward train|ppo --plan`, and the check that
// refuses a run that cannot fit its device): policy/runtime/memory_plan.h counts, filled in from
// the stage config and the model folders' config.json, before any weight is read.
//
// Errors: rlhf::Error naming the folder or config field (a missing or unreadable config.json), and
// check_stage_memory's refusal with the plan's table. Set RLHF_NO_MEMORY_CHECK=1 to skip the
// refusal (the plan is an estimate). Thread safety: none needed (reads files, no shared state).
#pragma once

#include "policy/model/model.h"
#include "policy/runtime/memory_plan.h"
#include "proto/ppo.pb.h"
#include "proto/reward.pb.h"
#include "proto/sft.pb.h"

namespace rlhf::pipelines {

policy::ModelShape model_shape(const policy::ModelConfig& c);

policy::MemoryPlan sft_memory_plan(const proto::SftConfig& config);
policy::MemoryPlan reward_memory_plan(const proto::RewardTrainConfig& config);
// The config as the stage resolves it (resolved_ppo_config); LoRA without a reference folder
// counts no reference weights (the policy's base with adapters off, policy/ppo/ppo_trainer.h).
policy::MemoryPlan ppo_memory_plan(const proto::PpoConfig& config);

// Refuses (rlhf::Error with the table) a plan over the device's available memory
// (policy::available_memory), unless RLHF_NO_MEMORY_CHECK is set.
void check_stage_memory(const policy::MemoryPlan& plan);
// At the start of a stage: the plan of `config` (plan_of), refused as above when it does not fit;
// a plan that cannot be made (a folder it cannot read) is skipped, and the stage's own loading
// then names the problem. Defined for SftConfig, RewardTrainConfig and PpoConfig.
template <class Config>
void check_stage_memory(const Config& config, policy::MemoryPlan (*plan_of)(const Config&));

}  // namespace rlhf::pipelines

// The one writer of stage manifests (<stage folder>/manifest.pb + manifest.json,
// common/manifest.h). Every stage records itself through here: the trainer commands (`rlhf sft`,
// `rlhf reward train`, `rlhf ppo`, `rlhf dpo`, whose trainers only fill the record) and the
// pipeline's own stages (tokenizer, sample, annotate). A stage is marked unfinished (complete =
// false) once it has decided to run (for the trainers: after their resume check, so a refused run
// leaves a finished record as it was), and finished when its outputs are on disk.
//
// Errors: rlhf::Error naming the folder when a manifest cannot be written (common/manifest.h),
// plus what the trainers throw (policy/training/sft_trainer.h, reward/trainer.h). Thread safety:
// one writer per stage folder; run_sft_stage and run_reward_stage train in the calling process and
// join its data-parallel group (policy/runtime/distributed.h), so one at a time per process.
#pragma once

#include <string>

#include "policy/dpo/dpo_trainer.h"
#include "policy/training/sft_trainer.h"
#include "proto/manifest.pb.h"
#include "proto/reward.pb.h"
#include "reward/trainer.h"

namespace rlhf::pipelines {

// complete = false: the folder holds an unfinished stage.
void mark_stage_running(const proto::StageManifest& manifest, const std::string& dir);
// finished_at, complete = true, written atomically.
void finish_stage(proto::StageManifest manifest, const std::string& dir, double wall_seconds);

// `rlhf sft`: policy::train_sft with its stage record written (nothing is written for a finished
// run found in the folder or for a stop_after interruption).
policy::SftResult run_sft_stage(const proto::SftConfig& config);

// `rlhf reward train`: exports the pairs of config.annotation_db when it is set
// (pipelines/annotation_pairs.h), then reward::train_reward_model with its stage record written.
reward::TrainResult run_reward_stage(proto::RewardTrainConfig config);

// `rlhf dpo`: policy::dpo::train_dpo with its stage record written (nothing is written for a
// finished run found in the folder or for a stop_after interruption).
policy::dpo::DpoResult run_dpo_stage(const proto::DpoConfig& config);

}  // namespace rlhf::pipelines

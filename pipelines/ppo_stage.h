// The `ppo` stage: loads the inputs a PpoConfig names (policy, reference, critic initialisation,
// teacher: reward model, rule or scorer socket; prompts), runs policy::PpoTrainer and writes
// <out>/model (the final policy checkpoint with a copy of the tokenizer's files when the config
// names a tokenizer), <out>/manifest.pb/.json, metrics.jsonl, rollouts/ and checkpoints/.
//
// Errors: rlhf::Error naming the config field, file or folder (a bad config value with its line, a
// model that cannot be loaded "ppo: loading the <what> (<dir>): ...", a tokenizer that does not
// match the policy or the reward model, bad prompts), plus what the trainer throws
// (policy/ppo/ppo_trainer.h). Thread safety: one run per output folder, and one per process (the
// trainer joins the process's data-parallel group, policy/runtime/distributed.h).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "proto/ppo.pb.h"

namespace rlhf::pipelines {

struct PpoStageOptions {
  std::string config_path;  // PpoConfig text format
  // The config to run, when the caller already loaded it (with its overrides applied, as
  // `rlhf ppo` does); config_path then only names it in messages. Unset: read from config_path.
  std::optional<proto::PpoConfig> config;
  std::string out_dir;            // overrides config.out_dir ("ppo" when both are empty)
  std::optional<int> iterations;  // overrides config.iterations
  std::string device;             // overrides config.device when not empty
  std::string dtype;              // overrides config.dtype when not empty
  // Gold teacher for monitoring (not training): "quickstart" logs gold/accuracy of each
  // iteration's rollouts; with gold_prompts (JSON lines {"prompt": ...}) the greedy held-out gold
  // accuracy before and after training goes into the manifest metrics.
  std::string gold_task;
  std::string gold_prompts;
};

// Runs (or resumes) the stage; returns the last iteration's stats plus gold numbers.
std::map<std::string, double> run_ppo_stage(const PpoStageOptions& options);

}  // namespace rlhf::pipelines

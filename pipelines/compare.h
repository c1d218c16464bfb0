// `rlhf pipeline compare`: PPO and its critic-free relatives (GRPO, Dr. GRPO, RLOO,
// REINFORCE++-baseline) and DPO trained from the same SFT student with the same teacher and
// rankings, each measured by the quickstart's gold teacher (docs/compare.md).
//
// It runs the pipeline's stages through `reward` in the run folder (finished stages are skipped
// as `pipeline run` skips them), then trains every method for every seed into
// <run>/compare/<method>/seed-N/ as a child process (`rlhf ppo` or `rlhf dpo`, data-parallel with
// the ppo / reward stage's process count), and evaluates the result in-process: greedy gold
// accuracy on the held-out problems, and over answers sampled at temperature 1 on the held-out
// prompts the KL to the SFT student (per-answer sum of log pi - log pi_sft, as the RL loop's
// kl/mean) and the reward model's mean score. The SFT student is evaluated the same way once
// (<run>/compare/sft.json). After every finished seed it writes compare.json and compare.html
// (pipelines/compare_report.h).
//
// Methods: "ppo" is the ppo section as the pipeline runs it; "grpo", "dr_grpo", "rloo" and
// "reinforce_baseline" are the ppo section with advantage_estimator set to the name,
// samples_per_prompt = CompareConfig.samples_per_prompt, no critic, and (grpo, dr_grpo) the KL as
// a k3 loss term (kl_in_loss, as GRPO); every RL method keeps the section's batch_size, so each
// generates the same number of answers per iteration. "dpo" trains CompareConfig.dpo on the
// annotate stage's pairs against the SFT student. CompareConfig.method entries override any of
// this per method. Seed N trains with the pipeline's ppo-stage seed + N (seed 0 of "ppo" is the
// pipeline's own ppo stage).
//
// Resuming: a (method, seed) whose result.json records the same fingerprint (its resolved config
// and the content hashes of its inputs) is skipped; one interrupted with the same fingerprint
// resumes (the trainers continue from their checkpoints); a changed config or input starts it
// afresh. Wall seconds add up over the attempts.
//
// Errors: rlhf::UsageError for an unknown method (naming the known ones), a repeated method, a
// task other than "quickstart" or no seeds; rlhf::Error from the pipeline stages, the config
// (naming file and field, e.g. "compare.method[1].name") or a trainer child (naming method and
// seed). Thread safety: one comparison per run folder; runs children and prints progress.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/text_config.h"
#include "pipelines/pipeline.h"
#include "proto/pipeline.pb.h"

namespace rlhf::pipelines {

// ppo, grpo, dr_grpo, rloo, reinforce_baseline, dpo.
const std::vector<std::string>& compare_method_names();

struct CompareOptions {
  RunOptions run;                    // config, run folder, device / dtype, stop timeout
  std::vector<std::string> methods;  // empty: the config's compare.methods, or all six
  std::vector<uint64_t> seeds;       // empty: {0}
};

// Checks a pipeline config's compare section through `errors` (a reporter for that section).
void validate_compare_config(const proto::CompareConfig& config, const ConfigErrors& errors);

// Runs the comparison; returns the run folder (compare.json and compare.html are in it).
std::string run_compare(const CompareOptions& options);

}  // namespace rlhf::pipelines

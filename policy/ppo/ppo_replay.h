// `rlhf replay`: inspect rollout files, recompute rewards/GAE from their per-token inputs, and
// (with a checkpoint) recompute log-probs to find train/inference mismatches.
//
// Errors: rlhf::Error naming the file / record / option (a record without gamma/lam when none is
// given, an unknown --sample index or --sort key, a policy folder that does not load, with
// "replay --policy DIR: " in front). Results are returned by value and printed to the given
// stream; nothing here keeps state, so calls on different files may run on different threads.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "proto/rollout.pb.h"

namespace rlhf::policy {

struct RecomputeParams {
  // Unset = the value stored in each record (a record without gamma/lam needs them given).
  std::optional<double> gamma, lam, kl_coef;
};

struct RecomputedSample {
  int64_t index = 0;
  std::vector<float> kl, rewards, advantages, returns;  // unwhitened, float32 like the trainer
  bool compared = false;    // the record stored advantages to compare with
  double max_abs_diff = 0;  // over kl, rewards, advantages, returns (stored vs recomputed)
  int64_t mismatches = 0;   // entries that differ at all (replay of our own files is exact)
  std::optional<float> sequence_advantage;  // critic-free estimators: the group's advantage
};

// The sequence advantages of a file's critic-free records (advantage_estimator grpo, dr_grpo,
// rloo, reinforce_baseline), index -> advantage: ppo::group_advantages over each group's shaped
// scores (the records sharing `group`, in index order), as the trainer computed them. Empty for a
// PPO (gae) file. Throws rlhf::Error naming the group when it does not hold samples_per_prompt
// records (all records of the iteration are needed) or the estimator is unknown.
std::map<int64_t, float> group_sequence_advantages(
    const std::vector<proto::RolloutRecord>& records);

// Recomputes with the formulas (policy/ppo/ppo_math.h: per_token_kl, compute_rewards,
// compute_gae; critic_free_advantages for the critic-free estimators, whose records need their
// `sequence_advantage` from group_sequence_advantages, else rlhf::Error) in float32 on one row,
// which gives bit-identical numbers to the batched trainer. A kl_in_loss record's rewards hold no
// KL term. The recomputed sequence advantage is compared with the stored one too.
RecomputedSample recompute_sample(const proto::RolloutRecord& r, const RecomputeParams& p,
                                  std::optional<float> sequence_advantage = std::nullopt);

struct ReplayViewOptions {
  std::optional<int64_t> sample;  // only this index (as stored in the record)
  std::string sort;               // "", "score" (ascending) or "-score" (descending)
  std::optional<double> min_score, max_score;
};

// Records selected by the options, in display order.
std::vector<const proto::RolloutRecord*> select_samples(
    const std::vector<proto::RolloutRecord>& records, const ReplayViewOptions& options);

// Human-readable sample: header, prompt and response text (or ids) and per-token columns
// (t, token, logp, ref_logp, kl, value, reward, advantage).
void print_sample(std::ostream& os, const proto::RolloutRecord& r);

// Max |logp_stored - logp_recomputed| per sample, with the checkpoint in `policy_dir` (teacher
// forcing at the record's generation temperature).
struct LogprobCheck {
  int64_t index = 0;
  double max_abs_diff = 0;
};
std::vector<LogprobCheck> recompute_logprobs(const std::vector<proto::RolloutRecord>& records,
                                             const std::string& policy_dir,
                                             const std::string& device = "cpu");

}  // namespace rlhf::policy

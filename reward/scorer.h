// RewardScorer: batched, no-grad scoring with a trained reward model (the teacher in PPO).
//
// Owns its model copy on its own device (e.g. the teacher on "cuda:1" while the policy trains on
// "cuda:0", or both on "cpu"). Not thread-safe: use one scorer per thread.
// Scores are already shifted by the stored offset (mean 0 over the training answers).
// Errors: rlhf::Error when loading fails (naming the folder), when prompts and answers differ in
// count, or when a token id is outside the vocabulary; c10::Error from libtorch (e.g. out of
// device memory). model() returns the scorer's own model: calls on it count as calls on the scorer.
//
// Precision (ScorerOptions::precision): kFp32 (the default) is float32 throughout. kBf16 reads the
// model's matrices and token embedding table straight into bfloat16
// (policy::frozen_base_load_options: no float32 copy; norms, biases and the scalar head stay
// float32), runs the backbone under bf16 autocast (policy/runtime/device.h) and the scalar head in
// float32 (score_batch): the scores differ from the float32 model's by the backbone's bfloat16
// rounding but are not rounded to bfloat16 themselves (tests/reward/reward_model_test.cpp states
// the tolerance).
#pragma once

#include <string>
#include <vector>

#include "policy/runtime/device.h"
#include "reward/comparisons.h"
#include "reward/evaluation.h"
#include "reward/reward_model.h"

namespace rlhf::reward {

struct ScorerOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  int batch_size = 32;         // sequences per forward pass
  // kBf16: frozen bfloat16 matrices and embeddings, the backbone under bf16 autocast (see above).
  policy::Precision precision = policy::Precision::kFp32;
};

class RewardScorer {
 public:
  // Loads a reward model folder (see load_reward_model); throws rlhf::Error naming the folder.
  explicit RewardScorer(const std::string& model_dir, const ScorerOptions& options = {});

  // One score per (prompts[i], answers[i]); sizes must match.
  std::vector<float> score(const std::vector<std::string>& prompts,
                           const std::vector<std::string>& answers);

  // Same, from token ids in this model's vocabulary (check tokenizer_sha256() against the
  // policy's): prompt ids without BOS, answer ids without EOS (a trailing EOS is dropped).
  std::vector<float> score_ids(const std::vector<std::vector<int>>& prompt_ids,
                               const std::vector<std::vector<int>>& answer_ids);

  // Pairwise metrics on comparisons.
  PairMetrics evaluate(const std::vector<Comparison>& comparisons);

  const policy::Tokenizer& tokenizer() const { return rm_.tokenizer; }
  const std::string& tokenizer_sha256() const { return rm_.tokenizer.sha256(); }
  const proto::RewardModelMeta& meta() const { return rm_.meta; }
  policy::Transformer& model() { return rm_.model; }
  torch::Device device() const { return device_; }

 private:
  RewardModel rm_;
  ScorerOptions options_;
  torch::Device device_;
};

}  // namespace rlhf::reward

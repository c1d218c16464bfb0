// Reward model training: Bradley-Terry pairwise loss on comparisons.
//
// Loss per comparison: -log sigmoid(r_chosen - r_rejected - margin) (Stiennon et al. 2020;
// InstructGPT, Ouyang et al. 2022, eq. 1: all comparisons of one ranking in one batch, each
// answer scored once per batch). AdamW (weight decay on matrices only), linear warm-up then cosine
// decay to min_lr_ratio * lr, global-norm gradient clipping.
//
// Output folder (--out):
//   model/        the kept reward model (best held-out accuracy), scores shifted so that the mean
//                 over the training answers is 0 (offset folded into the head bias, in reward.pb)
//   best/         best checkpoint before the shift;  state/  resumable state (weights, AdamW, step)
//   metrics.jsonl + TensorBoard events;  manifest.pb / manifest.json (StageManifest "reward")
#pragma once

#include <string>

#include "proto/reward.pb.h"
#include "reward/evaluation.h"

namespace rlhf::reward {

struct TrainResult {
  PairMetrics heldout;       // of the final model (model/)
  int64_t best_step = 0;
  int64_t steps = 0;         // steps run in total
  double score_offset = 0;   // subtracted from raw scores
  double wall_seconds = 0;
  std::string model_dir;
};

// Runs (or with resume=true continues) training as configured; `config` must have out_dir set.
// Defaults are applied here. Throws rlhf::Error with context on bad inputs.
TrainResult train_reward_model(proto::RewardTrainConfig config, bool resume = false);

// Learning rate at `step` (0-based): linear warm-up over warmup steps, then cosine to
// lr * min_ratio at total_steps.
double warmup_cosine_lr(int64_t step, int64_t total_steps, int64_t warmup, double lr,
                        double min_ratio);

}  // namespace rlhf::reward

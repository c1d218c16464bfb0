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
//   best/         best checkpoint before the shift (with no held-out comparisons: the final one;
//                 with LoRA under dtype bf16 its matrices are the bfloat16 effective weights, and
//                 model/ merges best/adapter into float32 instead, as SFT writes its model)
//   state/        resumable state (policy/training/training.h: weights, AdamW, RNG, step; `latest`)
//   metrics.jsonl + TensorBoard events;  manifest.pb / manifest.json (StageManifest "reward": the
//                 trainer fills TrainResult::manifest, pipelines/stage_record.h writes it)
//
// Setup through the training toolkit (policy/training/training.h), as SFT and PPO do:
// place_trainer (device, precision, process group, threads), trainable_parameters, Optimizer
// from config.optimizer (proto/optimizer.proto; token embeddings in their own group at
// lr * embedding_lr_scale when that is not 1), make_schedule, StateFolder.
//
// Ownership: train_reward_model owns what it builds for the call; the results are files and the
// returned TrainResult. Thread safety: one run per process at a time (it sets torch's global
// threads and seeds the global torch RNG). Errors: rlhf::Error naming the config field, the data
// file or the state folder.
#pragma once

#include <string>

#include "common/manifest.h"
#include "proto/reward.pb.h"
#include "reward/evaluation.h"

namespace rlhf::reward {

struct TrainResult {
  PairMetrics heldout;  // of the final model (model/)
  int64_t best_step = 0;
  int64_t steps = 0;        // steps run in total
  double score_offset = 0;  // subtracted from raw scores
  double wall_seconds = 0;
  std::string model_dir;
  bool already_complete = false;  // the folder held this finished run; nothing was trained
  proto::StageManifest manifest;  // the finished stage record (written by pipelines/stage_record.h)
};

// Runs training as configured (`config` must have out_dir and train_file set; defaults are
// applied here). Resumes by the one rule of policy/training/training.h: an out_dir whose state/
// holds a checkpoint of the same config fingerprint continues from it (a finished run returns its
// numbers with already_complete), one of another config is refused. Throws rlhf::Error with
// context. on_start (optional) receives the unfinished stage record once the run will train.
TrainResult train_reward_model(const proto::RewardTrainConfig& config,
                               const StageStarted& on_start = nullptr);

}  // namespace rlhf::reward

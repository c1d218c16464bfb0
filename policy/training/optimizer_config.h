// The optimizer section every trainer config shares (proto::OptimizerConfig,
// proto/optimizer.proto): its checks, its per-trainer defaults and the warm-up it resolves to.
// Torch-free; the optimizer and schedule built from it are policy/training/training.h (Optimizer,
// make_schedule). Functions only; thread-safe (no shared state).
#pragma once

#include <cstdint>

#include "common/text_config.h"
#include "proto/optimizer.pb.h"

namespace rlhf::policy::training {

// Which trainer's defaults fill the fields proto/optimizer.proto leaves without a [default].
enum class OptimizerDefaults {
  kSupervised,  // SFT and reward: lr 3e-4, weight_decay 0.1, beta2 0.95, eps 1e-8, warm-up 5%
  kPpo,         // PPO: lr 1e-5, weight_decay 0, beta2 0.999, eps 1e-5, no warm-up
};
// Precision: SFT and reward apply lr, weight_decay, beta1, beta2, grad_clip, warmup_ratio,
// min_lr_ratio and the floor lr * min_lr_ratio at float32 precision, as they did when these were
// float fields of their own configs (before the shared section); PPO's were double and stay
// double. So a config trains the same run, bit for bit, as before the change (the quickstart's
// figures are identical). eps was always a double (1e-8) and stays one.

// The trainer's values of the fields without a [default] (lr, weight_decay, beta2, eps,
// warmup_ratio; warmup_steps stays unset), the table of proto/optimizer.proto.
proto::OptimizerConfig optimizer_defaults(OptimizerDefaults trainer);

// Fills every unset field of `optimizer` from the trainer's defaults, then from the [default]s.
// Afterwards every field but warmup_steps is set (warmup_steps unset: warmup_ratio applies).
void resolve_optimizer_config(proto::OptimizerConfig* optimizer, OptimizerDefaults trainer);

// The settings `trainer` trains with (Precision above): `optimizer` (resolved) as it is for kPpo;
// for kSupervised a copy with lr, weight_decay, beta1, beta2, grad_clip, warmup_ratio and
// min_lr_ratio rounded to float32. The resolved config itself (manifests, fingerprints) keeps the
// values as written; the trainers build their Optimizer and schedule from this copy.
proto::OptimizerConfig applied_settings(const proto::OptimizerConfig& optimizer,
                                        OptimizerDefaults trainer);

// Checks every value that is set (and the [default]s): lr > 0 (>= 0 when lr_may_be_zero: PPO may
// freeze the policy), weight_decay >= 0, beta1 and beta2 in [0, 1), eps > 0, grad_clip >= 0,
// warmup_steps >= 0, warmup_ratio and min_lr_ratio in [0, 1], schedule "cosine" | "linear" |
// "constant". Throws rlhf::Error through `errors` (give it errors.nested("optimizer"), so paths
// read "optimizer.lr").
void validate_optimizer_config(const proto::OptimizerConfig& optimizer, const ConfigErrors& errors,
                               bool lr_may_be_zero = false);

// Warm-up steps over a run of `total_steps`: warmup_steps when set, else
// floor(warmup_ratio * total_steps).
int64_t resolved_warmup_steps(const proto::OptimizerConfig& optimizer, int64_t total_steps);

}  // namespace rlhf::policy::training

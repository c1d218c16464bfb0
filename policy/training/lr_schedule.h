// Learning-rate schedules: linear warm-up, then cosine decay to a floor (the schedule of GPT-3,
// LLaMA and nanoGPT's train.py), linear decay to a floor (lm-human-preferences anneals the PPO
// learning rate linearly), or a constant rate. Every trainer builds its schedule from its config's
// optimizer section with training::make_schedule (policy/training/training.h). Plain values:
// copyable, thread-safe to read.
// Nothing here throws: at() is defined for every step (steps past total_steps stay at the floor);
// the configs are validated where they are read (policy/training/optimizer_config.h).
#pragma once

#include <cstdint>

namespace rlhf::policy {

struct WarmupCosine {
  double peak_lr = 3e-4;
  double min_lr = 3e-5;  // floor reached at total_steps
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // Learning rate for optimizer step `step` (0-based): (step+1)/warmup * peak during warm-up,
  // then min + (peak - min) * (1 + cos(pi * progress)) / 2 with progress in [0, 1].
  double at(int64_t step) const;
};

// Same warm-up and fields as WarmupCosine, then a straight line from peak_lr (first step after
// the warm-up) to min_lr (step total_steps - 1 and after): min + (peak - min) * (1 - progress).
struct WarmupLinear {
  double peak_lr = 3e-4;
  double min_lr = 3e-5;  // floor reached at total_steps
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  double at(int64_t step) const;
};

// The shape after the warm-up (proto OptimizerConfig.schedule: "cosine" | "linear" | "constant").
enum class LrShape { kCosine, kLinear, kConstant };

// One schedule of any shape: kCosine is WarmupCosine, kLinear WarmupLinear, kConstant the same
// warm-up and then peak_lr (WarmupLinear with min_lr = peak_lr), each computed exactly as those.
struct LrSchedule {
  LrShape shape = LrShape::kCosine;
  double peak_lr = 3e-4;
  double min_lr = 3e-5;  // floor reached at total_steps (ignored by kConstant)
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // Learning rate for step `step` (0-based).
  double at(int64_t step) const;
};

}  // namespace rlhf::policy

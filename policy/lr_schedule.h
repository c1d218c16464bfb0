// Learning-rate schedule: linear warm-up, then cosine decay to a floor (the schedule of GPT-3,
// LLaMA and nanoGPT's train.py).
#pragma once

#include <cstdint>

namespace rlhf::policy {

struct WarmupCosine {
  double peak_lr = 3e-4;
  double min_lr = 3e-5;     // floor reached at total_steps
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // Learning rate for optimizer step `step` (0-based): (step+1)/warmup * peak during warm-up,
  // then min + (peak - min) * (1 + cos(pi * progress)) / 2 with progress in [0, 1].
  double at(int64_t step) const;
};

}  // namespace rlhf::policy

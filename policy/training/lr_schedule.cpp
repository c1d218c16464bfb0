#include "policy/training/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace rlhf::policy {

double WarmupCosine::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps)
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps - 1);
  const double progress =
      std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
  return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double WarmupLinear::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps)
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps - 1);
  const double progress =
      std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
  return min_lr + (peak_lr - min_lr) * (1.0 - progress);
}

double LrSchedule::at(int64_t step) const {
  switch (shape) {
    case LrShape::kLinear:
      return WarmupLinear{peak_lr, min_lr, warmup_steps, total_steps}.at(step);
    case LrShape::kConstant:  // the warm-up still applies
      return WarmupLinear{peak_lr, peak_lr, warmup_steps, total_steps}.at(step);
    case LrShape::kCosine:
      break;
  }
  return WarmupCosine{peak_lr, min_lr, warmup_steps, total_steps}.at(step);
}

}  // namespace rlhf::policy

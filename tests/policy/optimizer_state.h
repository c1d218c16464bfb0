// What a trainer's saved AdamW state says about how it was built: the options of each parameter
// group, read back by loading the file into a toolkit Optimizer over the same parameters (loading
// replaces the options with the saved ones). Used to check that SFT, reward and PPO build their
// optimizer from the config's optimizer section through training::Optimizer.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "policy/training/optimizer_config.h"
#include "policy/training/training.h"

namespace rlhf::policy::testing {

struct SavedGroup {
  size_t params = 0;
  double beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
};

// The groups of the AdamW state in `file`, saved by an Optimizer over `params` (the same tensors'
// shapes and names; embedding_lr_scale as the trainer used it).
inline std::vector<SavedGroup> saved_adamw_groups(const training::NamedTensors& params,
                                                  const std::string& file,
                                                  double embedding_lr_scale = 1.0) {
  training::Optimizer opt(params, training::optimizer_defaults(training::OptimizerDefaults::kPpo),
                          embedding_lr_scale);
  opt.load(file, torch::kCPU);
  std::vector<SavedGroup> out;
  for (auto& g : opt.adamw().param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(g.options());
    out.push_back({g.params().size(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(),
                   o.weight_decay()});
  }
  return out;
}

}  // namespace rlhf::policy::testing

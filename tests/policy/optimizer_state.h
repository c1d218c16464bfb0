// What a trainer's saved AdamW state says about how it was built: the parameter groups and their
// options, read from the file (libtorch's own reader of the param_groups section). Used to check
// that SFT, reward and PPO build their optimizer from the config's optimizer section through
// training::Optimizer.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::policy::testing {

struct SavedGroup {
  size_t params = 0;
  double beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
};

// The groups of the AdamW state a training::Optimizer saved to `file`, in order.
inline std::vector<SavedGroup> saved_adamw_groups(const std::string& file) {
  torch::serialize::InputArchive archive;
  archive.load_from(file);
  torch::serialize::InputArchive groups_archive;
  archive.read("param_groups", groups_archive);
  std::vector<std::pair<std::vector<std::string>, std::unique_ptr<torch::optim::OptimizerOptions>>>
      groups;
  torch::optim::detail::serialize<torch::optim::AdamWOptions>(groups_archive, groups);
  std::vector<SavedGroup> out;
  for (const auto& [keys, options] : groups) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(*options);
    out.push_back(
        {keys.size(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.weight_decay()});
  }
  return out;
}

}  // namespace rlhf::policy::testing

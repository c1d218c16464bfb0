// The DPO family of preference losses (docs/dpo.md has the formulas and their sources): pure
// functions of the four sequence log-probabilities of a pair, so they are tested against
// hand-worked numbers (tests/dpo/dpo_math_test.cpp).
//
// Inputs are 1-D tensors of the same length (one entry per pair): the summed log-probability of
// the chosen and the rejected answer under the policy (with gradients) and under the frozen
// reference. Thread safety: no state; callable from any thread. Errors: rlhf::Error naming the
// loss when it is unknown; shapes are checked with TORCH_CHECK.
#pragma once

#include <torch/torch.h>

#include <string>

namespace rlhf::policy::dpo {

struct LossOptions {
  std::string loss = "sigmoid";  // "sigmoid" (DPO; cDPO with label_smoothing > 0) or "ipo"
  double beta = 0.1;
  double label_smoothing = 0;  // cDPO: share of pairs assumed flipped ("sigmoid" only)
};

struct PairTerms {
  torch::Tensor loss;             // [N] per-pair loss
  torch::Tensor chosen_reward;    // [N] beta * (logp_c - ref_c), no gradient
  torch::Tensor rejected_reward;  // [N] beta * (logp_r - ref_r), no gradient
};

// With h = (logp_c - ref_c) - (logp_r - ref_r):
//   sigmoid: -(1 - eps) * log sigmoid(beta h) - eps * log sigmoid(-beta h)   (eps =
//   label_smoothing) ipo:     (h - 1 / (2 beta))^2
PairTerms pair_losses(const torch::Tensor& logp_chosen, const torch::Tensor& logp_rejected,
                      const torch::Tensor& ref_chosen, const torch::Tensor& ref_rejected,
                      const LossOptions& options);

}  // namespace rlhf::policy::dpo

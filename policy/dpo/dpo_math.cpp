#include "policy/dpo/dpo_math.h"

#include "common/error.h"

namespace rlhf::policy::dpo {

PairTerms pair_losses(const torch::Tensor& logp_chosen, const torch::Tensor& logp_rejected,
                      const torch::Tensor& ref_chosen, const torch::Tensor& ref_rejected,
                      const LossOptions& o) {
  TORCH_CHECK(logp_chosen.dim() == 1 && logp_chosen.sizes() == logp_rejected.sizes() &&
                  logp_chosen.sizes() == ref_chosen.sizes() &&
                  logp_chosen.sizes() == ref_rejected.sizes(),
              "pair_losses: four 1-D tensors of one length expected");
  const torch::Tensor ratio_c = logp_chosen - ref_chosen;
  const torch::Tensor ratio_r = logp_rejected - ref_rejected;
  const torch::Tensor h = ratio_c - ratio_r;
  PairTerms t;
  if (o.loss == "sigmoid") {
    const torch::Tensor z = o.beta * h;
    t.loss = -torch::log_sigmoid(z) * (1.0 - o.label_smoothing);
    if (o.label_smoothing != 0) t.loss = t.loss - torch::log_sigmoid(-z) * o.label_smoothing;
  } else if (o.loss == "ipo") {
    t.loss = (h - 1.0 / (2.0 * o.beta)).pow(2);
  } else {
    throw Error("dpo: loss \"" + o.loss + "\": expected \"sigmoid\" or \"ipo\"");
  }
  t.chosen_reward = (o.beta * ratio_c).detach();
  t.rejected_reward = (o.beta * ratio_r).detach();
  return t;
}

}  // namespace rlhf::policy::dpo

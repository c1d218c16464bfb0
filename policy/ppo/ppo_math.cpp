#include "policy/ppo/ppo_math.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace rlhf::policy::ppo {

namespace {
void check_same_shape(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  TORCH_CHECK(a.sizes() == b.sizes(), what, ": shape ", a.sizes(), " vs mask/reference ",
              b.sizes());
}
}  // namespace

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask, int64_t dim) {
  auto m = mask.to(x.scalar_type());
  if (dim < 0) return (x * m).sum() / m.sum().clamp_min(1);
  return (x * m).sum(dim) / m.sum(dim).clamp_min(1);
}

torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask) {
  auto m = mask.to(x.scalar_type());
  auto mean = masked_mean(x, m);
  auto centered = x - mean;
  auto var = masked_mean(centered * centered, m);
  auto n = m.sum();
  // Bessel's correction as TRL masked_var (unbiased); a single element gives variance 0.
  auto correction = torch::where(n > 1, n / (n - 1).clamp_min(1), torch::ones_like(n));
  return var * correction;
}

torch::Tensor whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean) {
  check_same_shape(x, mask, "whiten");
  auto m = mask.to(x.scalar_type());
  auto mean = masked_mean(x, m);
  auto var = masked_var(x, m);
  auto w = (x - mean) * torch::rsqrt(var + 1e-8);
  if (!shift_mean) w = w + mean;
  return w * m;
}

torch::Tensor per_token_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp,
                           const torch::Tensor& mask) {
  check_same_shape(logp, mask, "per_token_kl logp");
  check_same_shape(ref_logp, mask, "per_token_kl ref_logp");
  return (logp - ref_logp) * mask.to(logp.scalar_type());
}

torch::Tensor last_token_index(const torch::Tensor& mask) {
  TORCH_CHECK(mask.dim() == 2, "last_token_index: mask must be [B, T], got ", mask.sizes());
  return (mask > 0).to(torch::kLong).sum(1) - 1;
}

torch::Tensor compute_rewards(const torch::Tensor& kl, const torch::Tensor& scores,
                              const torch::Tensor& mask, double kl_coef) {
  check_same_shape(kl, mask, "compute_rewards kl");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == kl.size(0),
              "compute_rewards: scores must be [B] = [", kl.size(0), "], got ", scores.sizes());
  auto m = mask.to(kl.scalar_type());
  auto rewards = (-kl_coef * kl) * m;
  auto last = last_token_index(mask);
  auto has_tokens = last >= 0;
  auto idx = last.clamp_min(0).unsqueeze(1);
  auto add = (scores.to(kl.scalar_type()) * has_tokens.to(kl.scalar_type())).unsqueeze(1);
  // Adds the score at the last real token only (scatter_add of a one-column tensor).
  return rewards.scatter_add(1, idx, add);
}

ObjectiveStats objective_stats(const torch::Tensor& kl, const torch::Tensor& scores,
                               double kl_coef) {
  TORCH_CHECK(kl.dim() == 2, "objective_stats: kl must be [B, T], got ", kl.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == kl.size(0),
              "objective_stats: scores must be [B] = [", kl.size(0), "], got ", scores.sizes());
  ObjectiveStats o;
  o.non_score_reward = (-kl_coef * kl.to(torch::kDouble)).sum(1).mean().item<double>();
  o.scores = scores.to(torch::kDouble).mean().item<double>();
  o.rlhf_reward = o.scores + o.non_score_reward;
  return o;
}

GaeResult compute_gae(const torch::Tensor& rewards, const torch::Tensor& values,
                      const torch::Tensor& mask, double gamma, double lam) {
  check_same_shape(rewards, mask, "compute_gae rewards");
  check_same_shape(values, mask, "compute_gae values");
  auto m = mask.to(rewards.scalar_type());
  auto r = rewards * m;
  auto v = values.to(rewards.scalar_type()) * m;
  const int64_t T = r.size(1);
  auto adv = torch::zeros_like(r);
  auto last_gae = torch::zeros({r.size(0)}, r.options());
  auto next_value = torch::zeros({r.size(0)}, r.options());  // V_T = 0
  // Right padding: pads carry r = v = 0 and sit after the real tokens, so at each row's last real
  // token next_value and last_gae are still 0 (V_T = 0, A_T = 0 at the row's own end).
  for (int64_t t = T - 1; t >= 0; --t) {
    auto mt = m.select(1, t);
    auto vt = v.select(1, t);
    auto delta = r.select(1, t) + gamma * next_value - vt;
    last_gae = (delta + (gamma * lam) * last_gae) * mt;
    adv.select(1, t).copy_(last_gae);
    next_value = vt;
  }
  GaeResult out;
  out.advantages = adv;
  out.returns = (adv + v) * m;
  return out;
}

std::optional<Estimator> parse_estimator(const std::string& name) {
  if (name.empty() || name == "gae") return Estimator::kGae;
  if (name == "grpo") return Estimator::kGrpo;
  if (name == "dr_grpo") return Estimator::kDrGrpo;
  if (name == "rloo") return Estimator::kRloo;
  if (name == "reinforce_baseline") return Estimator::kReinforceBaseline;
  return std::nullopt;
}

std::vector<float> group_advantages(const std::vector<float>& scores, int64_t k, Estimator e) {
  const int64_t n = (int64_t)scores.size();
  if (e == Estimator::kGae) throw Error("group_advantages: gae has no group advantages");
  if (k < 1 || n % k != 0)
    throw Error("group_advantages: " + std::to_string(n) + " scores are not groups of " +
                std::to_string(k));
  if (k < 2 && e != Estimator::kReinforceBaseline)
    throw Error("group_advantages: this estimator needs groups of at least 2, got " +
                std::to_string(k));
  std::vector<float> out(n);
  for (int64_t g = 0; g < n; g += k) {
    double sum = 0;
    for (int64_t i = g; i < g + k; ++i) sum += scores[i];
    const double mean = sum / (double)k;
    double ss = 0;
    for (int64_t i = g; i < g + k; ++i) ss += (scores[i] - mean) * (scores[i] - mean);
    const double sd = k > 1 ? std::sqrt(ss / (double)(k - 1)) : 0.0;
    for (int64_t i = g; i < g + k; ++i) {
      const double r = scores[i];
      double a = r - mean;
      if (e == Estimator::kGrpo) a = (r - mean) / (sd + 1e-4);
      if (e == Estimator::kRloo) a = r - (sum - r) / (double)(k - 1);
      out[i] = (float)a;
    }
  }
  return out;
}

CriticFreeResult critic_free_advantages(const torch::Tensor& kl, const torch::Tensor& seq_adv,
                                        const torch::Tensor& mask, double kl_coef, double gamma) {
  CriticFreeResult out;
  out.rewards = compute_rewards(kl, seq_adv, mask, kl_coef);
  out.advantages =
      compute_gae(out.rewards, torch::zeros_like(out.rewards), mask, gamma, 1.0).advantages;
  return out;
}

torch::Tensor k3_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp,
                    const torch::Tensor& mask) {
  check_same_shape(logp, mask, "k3_kl logp");
  check_same_shape(ref_logp, mask, "k3_kl ref_logp");
  auto m = mask.to(logp.scalar_type());
  auto d = (ref_logp - logp) * m;  // 0 at pads: exp(0) - 0 - 1 = 0
  return (torch::exp(d) - d - 1) * m;
}

LossAggregation loss_aggregation(Estimator e) {
  if (e == Estimator::kGrpo) return LossAggregation::kSequenceMean;
  if (e == Estimator::kDrGrpo) return LossAggregation::kConstantNorm;
  return LossAggregation::kTokenMean;
}

torch::Tensor aggregate_loss(const torch::Tensor& per_token, const torch::Tensor& mask,
                             LossAggregation how, int64_t max_tokens) {
  check_same_shape(per_token, mask, "aggregate_loss");
  auto m = mask.to(per_token.scalar_type());
  switch (how) {
    case LossAggregation::kTokenMean:
      return masked_mean(per_token, m);
    case LossAggregation::kSequenceMean:
      return masked_mean(per_token, m, 1).mean();
    case LossAggregation::kConstantNorm:
      TORCH_CHECK(max_tokens > 0, "aggregate_loss: max_tokens must be > 0, got ", max_tokens);
      return (per_token * m).sum() / (double)(per_token.size(0) * max_tokens);
  }
  return masked_mean(per_token, m);
}

PolicyLossResult clipped_policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                                     const torch::Tensor& advantages, const torch::Tensor& mask,
                                     double clip_range, LossAggregation how, int64_t max_tokens) {
  check_same_shape(logp, mask, "clipped_policy_loss logp");
  check_same_shape(old_logp, mask, "clipped_policy_loss old_logp");
  check_same_shape(advantages, mask, "clipped_policy_loss advantages");
  auto m = mask.to(logp.scalar_type());
  auto log_ratio = logp - old_logp;
  auto ratio = torch::exp(log_ratio);
  auto loss1 = -advantages * ratio;
  auto loss2 = -advantages * torch::clamp(ratio, 1.0 - clip_range, 1.0 + clip_range);
  PolicyLossResult out;
  out.loss = how == LossAggregation::kTokenMean
                 ? masked_mean(torch::max(loss1, loss2), m)
                 : aggregate_loss(torch::max(loss1, loss2), m, how, max_tokens);
  torch::NoGradGuard no_grad;
  out.clipfrac = masked_mean((loss2 > loss1).to(m.scalar_type()), m).item<double>();
  out.approx_kl = (0.5 * masked_mean(log_ratio * log_ratio, m)).item<double>();
  out.ratio_mean = masked_mean(ratio, m).item<double>();
  auto dev = (ratio - 1).abs() * m;
  out.ratio_max_dev = dev.numel() ? dev.max().item<double>() : 0.0;
  return out;
}

ValueLossResult clipped_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                                   const torch::Tensor& returns, const torch::Tensor& mask,
                                   double clip_range) {
  check_same_shape(values, mask, "clipped_value_loss values");
  check_same_shape(old_values, mask, "clipped_value_loss old_values");
  check_same_shape(returns, mask, "clipped_value_loss returns");
  auto m = mask.to(values.scalar_type());
  auto clipped = old_values + torch::clamp(values - old_values, -clip_range, clip_range);
  auto l1 = (values - returns).pow(2);
  auto l2 = (clipped - returns).pow(2);
  ValueLossResult out;
  out.loss = 0.5 * masked_mean(torch::max(l1, l2), m);
  torch::NoGradGuard no_grad;
  out.clipfrac = masked_mean((l2 > l1).to(m.scalar_type()), m).item<double>();
  return out;
}

AdaptiveKLController::AdaptiveKLController(double init_kl_coef, double target, double horizon)
    : value_(init_kl_coef), target_(target), horizon_(horizon) {
  if (!(target > 0))
    throw Error("adaptive KL controller: target must be > 0, got " + std::to_string(target));
  if (!(horizon > 0))
    throw Error("adaptive KL controller: horizon must be > 0, got " + std::to_string(horizon));
}

void AdaptiveKLController::update(double current_kl, int64_t n_steps) {
  // Ziegler et al. 2019, lm-human-preferences/lm_human_preferences/train_policy.py.
  double proportional_error = std::clamp(current_kl / target_ - 1.0, -0.2, 0.2);
  double mult = 1.0 + proportional_error * static_cast<double>(n_steps) / horizon_;
  value_ *= mult;
}

}  // namespace rlhf::policy::ppo

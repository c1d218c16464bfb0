// PPO numerics as pure tensor functions: per-token KL and rewards, GAE, whitening, the clipped
// policy and value losses, and the KL coefficient controllers. No model, no I/O, no state
// except in the controllers. Everything works on right-padded response batches:
//   B = number of samples, T = longest response; mask [B, T] is 1.0 for real response tokens
//   (the EOS included when generated) and 0.0 for pad positions after the end.
// References: Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences",
// openai/lm-human-preferences), Ouyang et al. 2022 (InstructGPT), Huang et al. 2024 ("The N
// Implementation Details of RLHF with PPO"), Hugging Face TRL (PPOTrainer), OpenRLHF.
//
// Errors: a shape that does not match (mask vs values, scores vs batch) throws c10::Error naming
// the function and both shapes; the KL controllers throw rlhf::Error for a target or horizon <= 0.
// Thread safety: the functions are pure (safe from any thread on distinct tensors); a controller
// object is not synchronised: one owner updates it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rlhf::policy::ppo {

// Mean of x over positions where mask = 1 (all elements, or along `dim` when dim >= 0).
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask, int64_t dim = -1);
// Variance over mask = 1 with Bessel's correction (n / (n - 1)), as TRL's masked_var.
torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask);

// Advantage/reward whitening over the batch (TRL `masked_whiten`; N details #7):
// (x - mean) / sqrt(var + 1e-8), mean/var over mask = 1 (var unbiased). With shift_mean = false
// the mean is added back (scale only; used for rewards). Pad positions come back as 0.
torch::Tensor whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean = true);

// kl_t = logp_t - ref_logp_t at real tokens, 0 at pads. [B, T] -> [B, T].
// (The "k1" estimator of Ziegler et al.; its sum over a sequence estimates KL(pi || pi_ref).)
torch::Tensor per_token_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp,
                           const torch::Tensor& mask);

// Index of the last real token per row [B] (int64), -1 for an empty row.
torch::Tensor last_token_index(const torch::Tensor& mask);

// reward_t = -kl_coef * kl_t; the teacher score [B] is added at the last real token of each row
// (the EOS when generated), never at a pad (Ziegler et al.; TRL compute_rewards). Pads get 0.
torch::Tensor compute_rewards(const torch::Tensor& kl, const torch::Tensor& scores,
                              const torch::Tensor& mask, double kl_coef);

// TRL's objective/* stats of one rollout batch (kl [B, T] from per_token_kl, 0 at pads; scores
// [B], the scores that entered the rewards):
//   non_score_reward = mean over rows of sum_t (-kl_coef * kl_t)
//   scores           = mean score
//   rlhf_reward      = scores + non_score_reward
struct ObjectiveStats {
  double non_score_reward = 0;
  double rlhf_reward = 0;
  double scores = 0;
};
ObjectiveStats objective_stats(const torch::Tensor& kl, const torch::Tensor& scores,
                               double kl_coef);

struct GaeResult {
  torch::Tensor advantages;  // [B, T], 0 at pads
  torch::Tensor returns;     // [B, T] = advantages + values, 0 at pads
};

// Generalised advantage estimation (Schulman et al. 2016) per the formulas:
//   delta_t = reward_t + gamma * V_{t+1} - V_t, with V_T = 0 at the row's own end T = length;
//   A_t = delta_t + gamma * lam * A_{t+1}, A_T = 0;  returns_t = A_t + V_t.
// rewards, values, mask: [B, T] float. Rows are right-padded (real tokens first). Unwhitened.
GaeResult compute_gae(const torch::Tensor& rewards, const torch::Tensor& values,
                      const torch::Tensor& mask, double gamma, double lam);

// ---- Critic-free advantage estimators (docs/ppo.md, "Advantage estimators") ----
enum class Estimator { kGae, kGrpo, kDrGrpo, kRloo, kReinforceBaseline };
// "gae", "grpo", "dr_grpo", "rloo", "reinforce_baseline" ("" reads as "gae"); nullopt otherwise.
std::optional<Estimator> parse_estimator(const std::string& name);

// Sequence advantages of critic-free estimators from scores [n] in groups of k consecutive
// entries (one prompt's answers; n a multiple of k), computed per group in double, returned as
// float (the same per group whatever else the batch holds, so `replay --recompute` of a group
// gives the trainer's numbers). With mean and std (unbiased, n - 1) over the group:
//   kGrpo:              (r_i - mean) / (std + 1e-4)       (Shao et al. 2024; TRL GRPOTrainer)
//   kDrGrpo:            r_i - mean                        (Liu et al. 2025, Dr. GRPO)
//   kRloo:              r_i - (sum - r_i) / (k - 1)       (Ahmadian et al. 2024; TRL RLOOTrainer)
//   kReinforceBaseline: r_i - mean (whitened later over the batch: OpenRLHF, Hu 2025)
// Throws rlhf::Error for kGae, k < 1, n not a multiple of k, or k < 2 with kGrpo/kDrGrpo/kRloo.
std::vector<float> group_advantages(const std::vector<float>& scores, int64_t k, Estimator e);

// Per-token advantages of a critic-free estimator: reward_t = -kl_coef * kl_t with the sequence
// advantage added at the last real token (compute_rewards), then the discounted sum to the end
// (compute_gae with V = 0 and lam = 1; OpenRLHF get_cumulative_returns). With gamma = 1 and
// kl_coef = 0 every real token carries the sequence advantage. Returns {advantages, rewards};
// the returns equal the advantages (there is no critic).
struct CriticFreeResult {
  torch::Tensor advantages, rewards;  // [B, T], 0 at pads
};
CriticFreeResult critic_free_advantages(const torch::Tensor& kl, const torch::Tensor& seq_adv,
                                        const torch::Tensor& mask, double kl_coef, double gamma);

// The k3 estimator of KL(pi || pi_ref) per token (Schulman 2020, "Approximating KL divergence";
// GRPO's KL loss term): exp(ref_logp - logp) - (ref_logp - logp) - 1 >= 0, 0 at pads.
torch::Tensor k3_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp,
                    const torch::Tensor& mask);

// How a per-token loss [B, T] becomes a scalar:
//   kTokenMean:    sum over real tokens / their count (PPO, TRL/OpenRLHF; rloo,
//                  reinforce_baseline)
//   kSequenceMean: mean over rows of each row's token mean (GRPO, TRL loss_type "grpo")
//   kConstantNorm: sum over real tokens / (B * max_tokens) (Dr. GRPO, TRL loss_type "dr_grpo":
//                  no length normalisation)
enum class LossAggregation { kTokenMean, kSequenceMean, kConstantNorm };
LossAggregation loss_aggregation(Estimator e);
torch::Tensor aggregate_loss(const torch::Tensor& per_token, const torch::Tensor& mask,
                             LossAggregation how, int64_t max_tokens);

struct PolicyLossResult {
  torch::Tensor loss;    // scalar, differentiable: masked mean of max(-A*r, -A*clip(r))
  double clipfrac = 0;   // fraction of real tokens where the clipped term was the larger one
  double approx_kl = 0;  // 0.5 * mean((logp - old_logp)^2) (TRL's approxkl)
  double ratio_mean = 0;
  double ratio_max_dev = 0;  // max |ratio - 1| over real tokens (sanity: 0 before any update)
};

// PPO-clip surrogate (Schulman et al. 2017), token-level masked mean as in TRL/OpenRLHF.
// logp [B, T] (with grad), old_logp/advantages/mask [B, T].
// With `how` other than kTokenMean the loss is aggregated by aggregate_loss(how, max_tokens)
// (the stats stay token means).
PolicyLossResult clipped_policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                                     const torch::Tensor& advantages, const torch::Tensor& mask,
                                     double clip_range,
                                     LossAggregation how = LossAggregation::kTokenMean,
                                     int64_t max_tokens = 0);

struct ValueLossResult {
  torch::Tensor loss;   // scalar: 0.5 * masked mean of max((v - R)^2, (v_clipped - R)^2)
  double clipfrac = 0;  // fraction of real tokens where the clipped error was the larger one
};

// Clipped value loss (Ziegler et al. / TRL): v_clipped = old_v + clamp(v - old_v, -c, c).
ValueLossResult clipped_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                                   const torch::Tensor& returns, const torch::Tensor& mask,
                                   double clip_range);

// KL coefficient controllers. Both see the mean over the batch of the per-sequence KL SUM
// (sum_t kl_t over a response), as in Ziegler et al. 2019 (lm-human-preferences, train_policy.py).
class KLController {
 public:
  virtual ~KLController() = default;
  virtual double value() const = 0;
  // current_kl: mean per-sequence KL sum of the batch just collected; n_steps: its sample count.
  virtual void update(double current_kl, int64_t n_steps) = 0;
  virtual void set_value(double v) = 0;  // for resume
};

class FixedKLController : public KLController {
 public:
  explicit FixedKLController(double kl_coef) : value_(kl_coef) {}
  double value() const override { return value_; }
  void update(double, int64_t) override {}
  void set_value(double v) override { value_ = v; }

 private:
  double value_;
};

// Ziegler et al. 2019 AdaptiveKLController:
//   e = clip(current / target - 1, -0.2, 0.2);  beta *= 1 + e * n_steps / horizon.
class AdaptiveKLController : public KLController {
 public:
  AdaptiveKLController(double init_kl_coef, double target, double horizon);
  double value() const override { return value_; }
  void update(double current_kl, int64_t n_steps) override;
  void set_value(double v) override { value_ = v; }

 private:
  double value_, target_, horizon_;
};

}  // namespace rlhf::policy::ppo

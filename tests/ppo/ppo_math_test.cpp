// PPO numerics against values computed by hand (the arithmetic is in the comments).
#include "policy/ppo/ppo_math.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/error.h"
#include "policy/training/lr_schedule.h"

using namespace rlhf::policy::ppo;

namespace {
torch::Tensor t2(std::vector<std::vector<double>> rows) {
  std::vector<torch::Tensor> r;
  for (auto& row : rows) r.push_back(torch::tensor(row, torch::kFloat64));
  return torch::stack(r);
}
void expect_near(const torch::Tensor& got, const std::vector<std::vector<double>>& want,
                 double tol = 1e-9) {
  auto g = got.to(torch::kFloat64).contiguous();
  ASSERT_EQ(g.size(0), (int64_t)want.size());
  for (size_t i = 0; i < want.size(); ++i)
    for (size_t j = 0; j < want[i].size(); ++j)
      EXPECT_NEAR(g[i][j].item<double>(), want[i][j], tol) << "at [" << i << "," << j << "]";
}
}  // namespace

TEST(PpoMath, PerTokenKlZeroAtPads) {
  auto kl = per_token_kl(t2({{-1, -2, -3}}), t2({{-1.5, -1, 0}}), t2({{1, 1, 0}}));
  expect_near(kl, {{0.5, -1.0, 0.0}});
}

TEST(PpoMath, RewardsAddScoreAtLastRealToken) {
  // row 0: -0.5 * [0.1, -0.2, 0.3] = [-0.05, 0.1, -0.15], + score 2 at t=2 -> 1.85
  // row 1 (length 2): -0.5 * [0.4, 0.2] = [-0.2, -0.1], + score -1 at t=1 -> -1.1; pad stays 0
  auto kl = t2({{0.1, -0.2, 0.3}, {0.4, 0.2, 5.0}});
  auto mask = t2({{1, 1, 1}, {1, 1, 0}});
  auto r = compute_rewards(kl, torch::tensor({2.0, -1.0}, torch::kFloat64), mask, 0.5);
  expect_near(r, {{-0.05, 0.1, 1.85}, {-0.2, -1.1, 0.0}});
}

TEST(PpoMath, GaeMatchesHandComputation) {
  // gamma 0.9, lam 0.8 (gamma*lam = 0.72), V_T = 0.
  // row 0: d2 = 1.0 - 0.3 = 0.7, A2 = 0.7
  //        d1 = -0.2 + 0.9*0.3 - 0.4 = -0.33, A1 = -0.33 + 0.72*0.7 = 0.174
  //        d0 = 0.1 + 0.9*0.4 - 0.5 = -0.04, A0 = -0.04 + 0.72*0.174 = 0.08528
  // row 1 (length 2; pad values are garbage that must be ignored):
  //        d1 = 2.0 - 0.5 = 1.5, A1 = 1.5; d0 = 0.5 + 0.9*0.5 - 1.0 = -0.05, A0 = 1.03
  auto rewards = t2({{0.1, -0.2, 1.0}, {0.5, 2.0, 9.0}});
  auto values = t2({{0.5, 0.4, 0.3}, {1.0, 0.5, 7.0}});
  auto mask = t2({{1, 1, 1}, {1, 1, 0}});
  auto g = compute_gae(rewards, values, mask, 0.9, 0.8);
  expect_near(g.advantages, {{0.08528, 0.174, 0.7}, {1.03, 1.5, 0.0}});
  expect_near(g.returns, {{0.58528, 0.574, 1.0}, {2.03, 2.0, 0.0}});
}

TEST(PpoMath, GaeDefaultsGammaOneLambda095) {
  // d2 = 0.7, A2 = 0.7; d1 = -0.2 + 0.3 - 0.4 = -0.3, A1 = -0.3 + 0.95*0.7 = 0.365
  // d0 = 0.1 + 0.4 - 0.5 = 0, A0 = 0.95*0.365 = 0.34675
  auto g = compute_gae(t2({{0.1, -0.2, 1.0}}), t2({{0.5, 0.4, 0.3}}), t2({{1, 1, 1}}), 1.0, 0.95);
  expect_near(g.advantages, {{0.34675, 0.365, 0.7}});
  // lam = 1, gamma = 1: A_t = sum of future rewards - V_t (Monte Carlo): [0.9-0.5, 0.8-0.4, 1-0.3]
  auto mc = compute_gae(t2({{0.1, -0.2, 1.0}}), t2({{0.5, 0.4, 0.3}}), t2({{1, 1, 1}}), 1.0, 1.0);
  expect_near(mc.advantages, {{0.4, 0.4, 0.7}});
}

TEST(PpoMath, GaeFloat32EqualsRowByRow) {
  // Batch composition must not change a row's numbers (replay recomputes one row at a time).
  auto rewards = torch::randn({4, 7});
  auto values = torch::randn({4, 7});
  auto mask = torch::ones({4, 7});
  mask.index_put_({1, torch::indexing::Slice(3)}, 0);
  mask.index_put_({3, torch::indexing::Slice(6)}, 0);
  auto g = compute_gae(rewards, values, mask, 1.0, 0.95);
  for (int i = 0; i < 4; ++i) {
    int64_t n = mask[i].sum().item<int64_t>();
    auto s = torch::indexing::Slice(0, n);
    auto gi = compute_gae(rewards[i].index({s}).unsqueeze(0), values[i].index({s}).unsqueeze(0),
                          torch::ones({1, n}), 1.0, 0.95);
    EXPECT_TRUE(torch::equal(gi.advantages[0], g.advantages[i].index({s})));
  }
}

TEST(PpoMath, WhitenMaskedUnbiased) {
  // [1,2,3,4]: mean 2.5, unbiased var 5/3, std 1.2909944; the pad value 100 is ignored.
  auto x = t2({{1, 2}, {3, 100}, {4, 0}});
  auto mask = t2({{1, 1}, {1, 0}, {1, 0}});
  auto w = whiten(x, mask);
  double s = std::sqrt(5.0 / 3.0 + 1e-8);
  expect_near(w, {{-1.5 / s, -0.5 / s}, {0.5 / s, 0}, {1.5 / s, 0}}, 1e-7);
  auto w2 = whiten(x, mask, /*shift_mean=*/false);
  expect_near(w2, {{-1.5 / s + 2.5, -0.5 / s + 2.5}, {0.5 / s + 2.5, 0}, {1.5 / s + 2.5, 0}}, 1e-7);
}

TEST(PpoMath, ClippedPolicyLossValuesAndGradient) {
  // ratio = [1.5, 0.5, 1.1], A = [1, 1, -2], clip 0.2
  // -A*r = [-1.5, -0.5, 2.2]; -A*clip(r) = [-1.2, -0.8, 2.2]; max = [-1.2, -0.5, 2.2]; mean 0.5/3
  auto logp = torch::tensor({std::log(1.5), std::log(0.5), std::log(1.1)}, torch::kFloat64)
                  .unsqueeze(0)
                  .requires_grad_(true);
  auto old = torch::zeros({1, 3}, torch::kFloat64);
  auto adv = t2({{1, 1, -2}});
  auto mask = t2({{1, 1, 1}});
  auto r = clipped_policy_loss(logp, old, adv, mask, 0.2);
  EXPECT_NEAR(r.loss.item<double>(), 0.5 / 3, 1e-12);
  EXPECT_NEAR(r.clipfrac, 1.0 / 3, 1e-12);  // only token 0 is clipped
  double l0 = std::log(1.5), l1 = std::log(0.5), l2 = std::log(1.1);
  EXPECT_NEAR(r.approx_kl, 0.5 * (l0 * l0 + l1 * l1 + l2 * l2) / 3, 1e-12);
  EXPECT_NEAR(r.ratio_mean, 3.1 / 3, 1e-12);
  EXPECT_NEAR(r.ratio_max_dev, 0.5, 1e-12);
  r.loss.backward();
  // d/dlogp: clipped token 0 -> 0; token 1: -A*r/3 = -0.5/3; token 2: 2.2/3
  expect_near(logp.grad(), {{0.0, -0.5 / 3, 2.2 / 3}}, 1e-12);
}

TEST(PpoMath, PolicyLossIgnoresPads) {
  auto logp = t2({{0.0, 3.0}});
  auto r = clipped_policy_loss(logp, torch::zeros({1, 2}, torch::kFloat64), t2({{2, 5}}),
                               t2({{1, 0}}), 0.2);
  EXPECT_NEAR(r.loss.item<double>(), -2.0, 1e-12);
  EXPECT_EQ(r.ratio_max_dev, 0.0);
  EXPECT_EQ(r.clipfrac, 0.0);
}

TEST(PpoMath, ClippedValueLoss) {
  // v = [1, 0, 2], old = [0.5, 0, 2.5], R = [2, 1, 0], clip 0.2 -> v_clip = [0.7, 0, 2.3]
  // (v-R)^2 = [1, 1, 4]; (v_clip-R)^2 = [1.69, 1, 5.29]; 0.5 * mean(max) = 0.5 * 7.98/3 = 1.33
  auto v = t2({{1, 0, 2}});
  auto r = clipped_value_loss(v, t2({{0.5, 0, 2.5}}), t2({{2, 1, 0}}), t2({{1, 1, 1}}), 0.2);
  EXPECT_NEAR(r.loss.item<double>(), 1.33, 1e-12);
  EXPECT_NEAR(r.clipfrac, 2.0 / 3, 1e-12);
}

TEST(PpoMath, AdaptiveKlController) {
  // Ziegler et al.: e = clip(kl/target - 1, +-0.2); beta *= 1 + e * n / horizon
  AdaptiveKLController c(0.1, 6.0, 10000.0);
  c.update(9.0, 64);  // e = clip(0.5) = 0.2 -> * 1.00128
  EXPECT_NEAR(c.value(), 0.100128, 1e-12);
  c.update(5.4, 100);  // e = -0.1 -> * 0.999
  EXPECT_NEAR(c.value(), 0.100128 * 0.999, 1e-12);
  c.update(0.0, 1000);  // e = clip(-1) = -0.2 -> * 0.98
  EXPECT_NEAR(c.value(), 0.100128 * 0.999 * 0.98, 1e-12);
  EXPECT_THROW(AdaptiveKLController(0.1, 0.0, 10.0), std::exception);
}

TEST(PpoMath, FixedKlController) {
  FixedKLController c(0.05);
  c.update(100.0, 64);
  EXPECT_EQ(c.value(), 0.05);
}

TEST(PpoMath, ObjectiveStatsAsTrl) {
  // kl rows: [0.5, -1.0, (pad)] and [0.2, 0.3, 0.1]; sums -0.5 and 0.6; beta 0.1:
  // -beta * sums = [0.05, -0.06], mean -0.005 = non_score_reward; scores [1, 2], mean 1.5;
  // rlhf_reward = 1.5 - 0.005 = 1.495.
  auto kl = per_token_kl(t2({{-1, -2, -3}, {-1, -1, -1}}), t2({{-1.5, -1, 0}, {-1.2, -1.3, -1.1}}),
                         t2({{1, 1, 0}, {1, 1, 1}}));
  auto o = objective_stats(kl, torch::tensor({1.0, 2.0}, torch::kFloat64), 0.1);
  EXPECT_NEAR(o.non_score_reward, -0.005, 1e-12);
  EXPECT_NEAR(o.scores, 1.5, 1e-12);
  EXPECT_NEAR(o.rlhf_reward, 1.495, 1e-12);
  // beta = 0: no KL term.
  auto z = objective_stats(kl, torch::tensor({1.0, 2.0}, torch::kFloat64), 0.0);
  EXPECT_EQ(z.non_score_reward, 0.0);
  EXPECT_EQ(z.rlhf_reward, 1.5);
  EXPECT_THROW(objective_stats(kl, torch::tensor({1.0}, torch::kFloat64), 0.1), c10::Error);
}

TEST(PpoMath, LearningRateSchedulesByHand) {
  // peak 1, floor 0.1, warm-up 2 steps, 6 steps: steps 0, 1 warm up to 0.5, 1.0; the decay runs
  // over steps 2..5 (progress 0, 1/3, 2/3, 1) and stays at the floor after.
  rlhf::policy::WarmupLinear lin{1.0, 0.1, 2, 6};
  const double want_lin[] = {0.5, 1.0, 1.0, 0.7, 0.4, 0.1, 0.1, 0.1};
  for (int s = 0; s < 8; ++s) EXPECT_NEAR(lin.at(s), want_lin[s], 1e-12) << "step " << s;
  // Cosine: 0.1 + 0.45 * (1 + cos(pi * progress)): progress 1/3 -> 0.775, 2/3 -> 0.325.
  rlhf::policy::WarmupCosine cos{1.0, 0.1, 2, 6};
  const double want_cos[] = {0.5, 1.0, 1.0, 0.775, 0.325, 0.1, 0.1, 0.1};
  for (int s = 0; s < 8; ++s) EXPECT_NEAR(cos.at(s), want_cos[s], 1e-12) << "step " << s;
  // No warm-up, a single step: the peak.
  EXPECT_EQ((rlhf::policy::WarmupLinear{2.0, 0.2, 0, 1}.at(0)), 2.0);
}

// ---- critic-free estimators (docs/ppo.md, "Advantage estimators") ----

TEST(PpoMath, GroupAdvantagesOfEachEstimator) {
  // Two groups of K = 3: [1, 2, 6] (mean 3, deviations [-2, -1, 3], unbiased variance
  // (4 + 1 + 9) / 2 = 7, std sqrt(7) = 2.6457513) and [5, 5, 5] (all equal: advantage 0).
  const std::vector<float> s{1, 2, 6, 5, 5, 5};
  auto near = [](const std::vector<float>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "at " << i;
  };
  // grpo: deviation / (std + 1e-4): -2 / 2.6458513 = -0.7559004, -1 / ... = -0.3779502, 3 / ...
  near(group_advantages(s, 3, Estimator::kGrpo), {-0.75590038, -0.37795019, 1.13385057, 0, 0, 0});
  // dr_grpo and reinforce_baseline: the deviation alone.
  near(group_advantages(s, 3, Estimator::kDrGrpo), {-2, -1, 3, 0, 0, 0});
  near(group_advantages(s, 3, Estimator::kReinforceBaseline), {-2, -1, 3, 0, 0, 0});
  // rloo: 1 - (2 + 6) / 2 = -3, 2 - (1 + 6) / 2 = -1.5, 6 - (1 + 2) / 2 = 4.5.
  near(group_advantages(s, 3, Estimator::kRloo), {-3, -1.5, 4.5, 0, 0, 0});
  // A group's advantages do not depend on the other groups of the batch (replay of one group).
  auto whole = group_advantages(s, 3, Estimator::kGrpo);
  auto one = group_advantages({1, 2, 6}, 3, Estimator::kGrpo);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(whole[i], one[i]);
}

TEST(PpoMath, GroupAdvantagesRefuseBadGroups) {
  EXPECT_THROW(group_advantages({1, 2, 3}, 2, Estimator::kGrpo), rlhf::Error);  // 3 % 2 != 0
  EXPECT_THROW(group_advantages({1, 2}, 1, Estimator::kRloo), rlhf::Error);     // no "others"
  EXPECT_THROW(group_advantages({1, 2}, 2, Estimator::kGae), rlhf::Error);
  EXPECT_NO_THROW(group_advantages({1, 2}, 1, Estimator::kReinforceBaseline));
}

TEST(PpoMath, ParseEstimatorNames) {
  EXPECT_EQ(parse_estimator(""), Estimator::kGae);
  EXPECT_EQ(parse_estimator("gae"), Estimator::kGae);
  EXPECT_EQ(parse_estimator("grpo"), Estimator::kGrpo);
  EXPECT_EQ(parse_estimator("dr_grpo"), Estimator::kDrGrpo);
  EXPECT_EQ(parse_estimator("rloo"), Estimator::kRloo);
  EXPECT_EQ(parse_estimator("reinforce_baseline"), Estimator::kReinforceBaseline);
  EXPECT_FALSE(parse_estimator("GRPO").has_value());
}

TEST(PpoMath, CriticFreeAdvantagesCarryTheSequenceAdvantageAndTheKlToGo) {
  // Row 0: kl [0.1, 0.2, 0.3], beta 0.5 -> rewards [-0.05, -0.1, -0.15 + 1 = 0.85]; advantages
  // are the sums to the end (gamma 1): [0.70, 0.75, 0.85]. Row 1 (length 2, sequence advantage
  // -2): rewards [-0.05, -0.05 - 2 = -2.05], advantages [-2.1, -2.05], pad 0.
  auto kl = t2({{0.1, 0.2, 0.3}, {0.1, 0.1, 9.0}});
  auto mask = t2({{1, 1, 1}, {1, 1, 0}});
  auto r = critic_free_advantages(kl, torch::tensor({1.0, -2.0}, torch::kFloat64), mask, 0.5, 1.0);
  expect_near(r.rewards, {{-0.05, -0.1, 0.85}, {-0.05, -2.05, 0}});
  expect_near(r.advantages, {{0.70, 0.75, 0.85}, {-2.1, -2.05, 0}});
  // kl_in_loss (beta 0 in the rewards): every real token carries the sequence advantage.
  auto plain =
      critic_free_advantages(kl, torch::tensor({1.0, -2.0}, torch::kFloat64), mask, 0.0, 1.0);
  expect_near(plain.advantages, {{1, 1, 1}, {-2, -2, 0}});
}

TEST(PpoMath, K3KlEstimator) {
  // logp -1, ref -2: d = ref - logp = -1 -> e^-1 + 1 - 1 = 0.3678794;
  // logp -2, ref -1: d = 1 -> e - 1 - 1 = 0.7182818; equal log-probs -> 0; pad -> 0.
  auto k3 = k3_kl(t2({{-1, -2, -3, -4}}), t2({{-2, -1, -3, 7}}), t2({{1, 1, 1, 0}}));
  expect_near(k3, {{0.36787944, 0.71828183, 0, 0}}, 1e-7);
}

TEST(PpoMath, LossAggregations) {
  // per-token [[1, 2, 3], [4, 5, pad]]: token mean 15 / 5 = 3; sequence mean (2 + 4.5) / 2 = 3.25;
  // constant norm (Dr. GRPO, max 4 tokens) 15 / (2 * 4) = 1.875.
  auto x = t2({{1, 2, 3}, {4, 5, 100}});
  auto mask = t2({{1, 1, 1}, {1, 1, 0}});
  EXPECT_NEAR(aggregate_loss(x, mask, LossAggregation::kTokenMean, 0).item<double>(), 3.0, 1e-12);
  EXPECT_NEAR(aggregate_loss(x, mask, LossAggregation::kSequenceMean, 0).item<double>(), 3.25,
              1e-12);
  EXPECT_NEAR(aggregate_loss(x, mask, LossAggregation::kConstantNorm, 4).item<double>(), 1.875,
              1e-12);
  EXPECT_EQ(loss_aggregation(Estimator::kGrpo), LossAggregation::kSequenceMean);
  EXPECT_EQ(loss_aggregation(Estimator::kDrGrpo), LossAggregation::kConstantNorm);
  EXPECT_EQ(loss_aggregation(Estimator::kRloo), LossAggregation::kTokenMean);
  // The clipped policy loss at ratio 1 is -A aggregated the same way.
  auto lp = t2({{-1, -1, -1}, {-1, -1, -1}});
  auto adv = t2({{-1, -2, -3}, {-4, -5, 0}});
  auto pl = clipped_policy_loss(lp, lp, adv, mask, 0.2, LossAggregation::kSequenceMean);
  EXPECT_NEAR(pl.loss.item<double>(), 3.25, 1e-12);
  pl = clipped_policy_loss(lp, lp, adv, mask, 0.2, LossAggregation::kConstantNorm, 4);
  EXPECT_NEAR(pl.loss.item<double>(), 1.875, 1e-12);
}

// The DPO family of losses against numbers worked by hand (docs/dpo.md).
#include "policy/dpo/dpo_math.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"

namespace rlhf::policy::dpo {
namespace {

// One pair: policy log-probs (-5 chosen, -7 rejected), reference (-6, -6): the chosen log-ratio
// is +1, the rejected -1, so h = 2.
struct OnePair {
  torch::Tensor c = torch::tensor({-5.0}, torch::requires_grad());
  torch::Tensor r = torch::tensor({-7.0}, torch::requires_grad());
  torch::Tensor rc = torch::tensor({-6.0});
  torch::Tensor rr = torch::tensor({-6.0});
};

TEST(DpoLoss, SigmoidMatchesHandWorkedNumbers) {
  OnePair p;
  // beta 0.1: z = 0.2, loss = log(1 + e^-0.2) = log(1.8187307531) = 0.5981388693
  auto t = pair_losses(p.c, p.r, p.rc, p.rr, {"sigmoid", 0.1, 0});
  EXPECT_NEAR(t.loss.item<double>(), 0.5981388693, 1e-6);
  EXPECT_NEAR(t.chosen_reward.item<double>(), 0.1, 1e-6);
  EXPECT_NEAR(t.rejected_reward.item<double>(), -0.1, 1e-6);
  // d loss / d logp_c = -beta (1 - sigmoid(0.2)) = -0.1 * 0.4501660027 = -0.0450166003
  t.loss.sum().backward();
  EXPECT_NEAR(p.c.grad().item<double>(), -0.0450166003, 1e-7);
  EXPECT_NEAR(p.r.grad().item<double>(), 0.0450166003, 1e-7);
  EXPECT_FALSE(t.chosen_reward.requires_grad());
}

TEST(DpoLoss, LabelSmoothingIsConservativeDpo) {
  OnePair p;
  // cDPO, eps 0.1: 0.9 log(1 + e^-0.2) + 0.1 log(1 + e^0.2)
  //   = 0.9 * 0.5981388693 + 0.1 * 0.7981388693 = 0.6181388693
  auto t = pair_losses(p.c, p.r, p.rc, p.rr, {"sigmoid", 0.1, 0.1});
  EXPECT_NEAR(t.loss.item<double>(), 0.6181388693, 1e-6);
  // gradient: -beta ((1 - eps)(1 - s) - eps s), s = sigmoid(0.2) = 0.5498339973
  //   = -0.1 (0.9 * 0.4501660027 - 0.1 * 0.5498339973) = -0.0350165999
  t.loss.sum().backward();
  EXPECT_NEAR(p.c.grad().item<double>(), -0.0350165999, 1e-7);
}

TEST(DpoLoss, IpoMatchesHandWorkedNumbers) {
  OnePair p;
  // (h - 1 / (2 beta))^2: beta 0.1 -> (2 - 5)^2 = 9; beta 0.5 -> (2 - 1)^2 = 1
  EXPECT_NEAR(pair_losses(p.c, p.r, p.rc, p.rr, {"ipo", 0.1, 0}).loss.item<double>(), 9.0, 1e-5);
  auto t = pair_losses(p.c, p.r, p.rc, p.rr, {"ipo", 0.5, 0});
  EXPECT_NEAR(t.loss.item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(t.chosen_reward.item<double>(), 0.5, 1e-6);
  // d/d logp_c = 2 (h - 1/(2 beta)) = 2
  t.loss.sum().backward();
  EXPECT_NEAR(p.c.grad().item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(p.r.grad().item<double>(), -2.0, 1e-6);
}

TEST(DpoLoss, PerPairOverABatch) {
  // Pair 2: h = (-3 - -2) - (-4 - -4) = -1; beta 1: log(1 + e^1) = 1.3132616875
  auto c = torch::tensor({-5.0, -3.0}), r = torch::tensor({-7.0, -4.0});
  auto rc = torch::tensor({-6.0, -2.0}), rr = torch::tensor({-6.0, -4.0});
  auto t = pair_losses(c, r, rc, rr, {"sigmoid", 1.0, 0});
  ASSERT_EQ(t.loss.numel(), 2);
  EXPECT_NEAR(t.loss[0].item<double>(), std::log1p(std::exp(-2.0)), 1e-6);
  EXPECT_NEAR(t.loss[1].item<double>(), 1.3132616875, 1e-6);
  EXPECT_NEAR(t.rejected_reward[1].item<double>(), 0.0, 1e-6);
}

TEST(DpoLoss, UnknownLossIsNamed) {
  OnePair p;
  try {
    pair_losses(p.c, p.r, p.rc, p.rr, {"hinge", 0.1, 0});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"hinge\""), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rlhf::policy::dpo

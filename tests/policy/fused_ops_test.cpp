// The fused kernels against hand-worked numbers, against their reference compositions (forward
// and backward) and against central-difference gradients in float64.
#include "policy/model/fused_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "policy/kernels/isa.h"

namespace rlhf::policy::fused {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Gradients of sum(f(inputs) * probe) for each input, by autograd.
std::vector<torch::Tensor> grads_of(
    const std::function<torch::Tensor(std::vector<torch::Tensor>&)>& f,
    std::vector<torch::Tensor> inputs, const torch::Tensor& probe) {
  for (auto& t : inputs) t = t.detach().clone().set_requires_grad(true);
  (f(inputs) * probe).sum().backward();
  std::vector<torch::Tensor> out;
  for (auto& t : inputs) out.push_back(t.grad());
  return out;
}

// Central differences of sum(f(inputs) * probe) at `checks` coordinates of input `which`,
// compared with the autograd gradient (float64 inputs).
void expect_matches_numerical_gradient(
    const std::function<torch::Tensor(std::vector<torch::Tensor>&)>& f,
    std::vector<torch::Tensor> inputs, size_t which, const torch::Tensor& probe) {
  auto analytic = grads_of(f, inputs, probe)[which].reshape({-1});
  torch::NoGradGuard no_grad;
  const double h = 1e-6;
  auto flat = inputs[which].reshape({-1});
  for (int64_t i = 0; i < flat.numel(); i += std::max<int64_t>(1, flat.numel() / 23)) {
    const double x0 = flat[i].item<double>();
    flat[i] = x0 + h;
    const double up = (f(inputs) * probe).sum().item<double>();
    flat[i] = x0 - h;
    const double down = (f(inputs) * probe).sum().item<double>();
    flat[i] = x0;
    EXPECT_NEAR(analytic[i].item<double>(), (up - down) / (2 * h), 1e-6) << "coordinate " << i;
  }
}

TEST(FusedRmsNorm, HandWorkedRow) {
  // mean(3^2, 4^2) = 12.5, 1/sqrt(12.5) = 0.282843; y = [3, 4] * 0.282843 * [1, 2].
  auto y = rms_norm(torch::tensor({{3.0f, 4.0f}}), torch::tensor({1.0f, 2.0f}), 0.0);
  EXPECT_NEAR(y[0][0].item<float>(), 0.848528f, 1e-5);
  EXPECT_NEAR(y[0][1].item<float>(), 2.262742f, 1e-5);
}

TEST(FusedRmsNorm, MatchesReferenceForwardAndBackward) {
  torch::manual_seed(1);
  auto x = torch::randn({3, 5, 24});
  auto w = torch::randn({24});
  auto probe = torch::randn({3, 5, 24});
  auto fused_f = [](std::vector<torch::Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); };
  auto ref_f = [](std::vector<torch::Tensor>& in) {
    return reference_rms_norm(in[0], in[1], 1e-5);
  };
  EXPECT_LT(max_abs_diff(rms_norm(x, w, 1e-5), reference_rms_norm(x, w, 1e-5)), 1e-5);
  auto g = grads_of(fused_f, {x, w}, probe);
  auto r = grads_of(ref_f, {x, w}, probe);
  EXPECT_LT(max_abs_diff(g[0], r[0]), 1e-4);
  EXPECT_LT(max_abs_diff(g[1], r[1]), 1e-4);
}

TEST(FusedRmsNorm, GradientsMatchCentralDifferences) {
  torch::manual_seed(2);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  std::vector<torch::Tensor> in = {torch::randn({4, 7}, opts), torch::randn({7}, opts)};
  auto probe = torch::randn({4, 7}, opts);
  auto f = [](std::vector<torch::Tensor>& v) { return rms_norm(v[0], v[1], 1e-6); };
  expect_matches_numerical_gradient(f, in, 0, probe);
  expect_matches_numerical_gradient(f, in, 1, probe);
}

TEST(FusedRmsNorm, WeightGradientDoesNotDependOnTheThreadCount) {
  // `rlhf replay --update` must reproduce a live run bit for bit whatever its thread setting.
  torch::manual_seed(8);
  auto x = torch::randn({300, 32});
  auto w = torch::randn({32});
  auto probe = torch::randn({300, 32});
  auto f = [](std::vector<torch::Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); };
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto one = grads_of(f, {x, w}, probe);
  at::set_num_threads(3);
  auto three = grads_of(f, {x, w}, probe);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one[0], three[0]));
  EXPECT_TRUE(torch::equal(one[1], three[1]));
}

TEST(FusedRope, RotatesOnePairByTheAngle) {
  // head_dim 2: (x1, x2) = (1, 0) rotated by 0.5 rad is (cos 0.5, sin 0.5); scale 2 doubles it.
  auto x = torch::tensor({1.0f, 0.0f}).view({1, 1, 2});
  auto angle = torch::full({1, 1, 1}, 0.5f);
  auto y = rope(x, angle.cos(), angle.sin(), 1, 2.0);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1, 1, 2}));
  EXPECT_NEAR(y[0][0][0][0].item<float>(), 2 * std::cos(0.5f), 1e-6);
  EXPECT_NEAR(y[0][0][0][1].item<float>(), 2 * std::sin(0.5f), 1e-6);
}

TEST(FusedRope, MatchesReferenceOnASliceOfAWiderRow) {
  torch::manual_seed(3);
  const int64_t B = 2, T = 5, H = 3, hd = 8;
  auto wide = torch::randn({B, T, 3 * H * hd});  // like a fused q/k/v projection
  auto x = wide.narrow(2, H * hd, H * hd);
  ASSERT_FALSE(x.is_contiguous());
  auto angles = torch::randn({B, T, hd / 2});
  auto c = angles.cos(), s = angles.sin();
  auto probe = torch::randn({B, H, T, hd});
  EXPECT_LT(max_abs_diff(rope(x, c, s, H, 0.35), reference_rope(x, c, s, H, 0.35)), 1e-6);
  auto fused_f = [&](std::vector<torch::Tensor>& in) { return rope(in[0], c, s, H, 0.35); };
  auto ref_f = [&](std::vector<torch::Tensor>& in) { return reference_rope(in[0], c, s, H, 0.35); };
  EXPECT_LT(max_abs_diff(grads_of(fused_f, {x}, probe)[0], grads_of(ref_f, {x}, probe)[0]), 1e-5);
}

TEST(FusedRope, GradientsMatchCentralDifferences) {
  torch::manual_seed(4);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto angles = torch::randn({2, 3, 2}, opts);
  auto c = angles.cos(), s = angles.sin();
  auto f = [&](std::vector<torch::Tensor>& v) { return rope(v[0], c, s, 2, 0.7); };
  expect_matches_numerical_gradient(f, {torch::randn({2, 3, 8}, opts)}, 0,
                                    torch::randn({2, 2, 3, 4}, opts));
}

TEST(FusedRope, RefusesAShapeItCannotSplitIntoHeads) {
  auto angles = torch::zeros({1, 2, 2});
  EXPECT_THROW(rope(torch::zeros({1, 2, 9}), angles, angles, 2), c10::Error);
}

// Qwen3's q/k norm: per-head RMSNorm then RoPE in one pass, on a slice of a wider row (as the
// fused q/k/v projection gives it).
TEST(FusedNormRope, EqualsTheTwoFusedStepsAndMatchesTheReference) {
  torch::manual_seed(5);
  const int64_t B = 2, T = 37, H = 4, hd = 16;  // 296 head rows: several weight-gradient chunks
  auto wide = torch::randn({B, T, 3 * H * hd}) * 3;
  auto x = wide.narrow(2, H * hd, H * hd);
  ASSERT_FALSE(x.is_contiguous());
  auto w = torch::rand({hd}) + 0.5;
  auto angles = torch::randn({B, T, hd / 2});
  auto c = angles.cos(), s = angles.sin();
  const double eps = 1e-6, scale = 0.25;
  auto probe = torch::randn({B, H, T, hd});
  auto fused_f = [&](std::vector<torch::Tensor>& in) {
    return norm_rope(in[0], in[1], eps, c, s, H, scale);
  };
  // What the decoder ran before: the fused RMSNorm on the reshaped slice, then the fused RoPE.
  auto steps_f = [&](std::vector<torch::Tensor>& in) {
    auto normed = rms_norm(in[0].reshape({B, T, H, hd}), in[1], eps).view({B, T, H * hd});
    return rope(normed, c, s, H, scale);
  };
  auto ref_f = [&](std::vector<torch::Tensor>& in) {
    return reference_norm_rope(in[0], in[1], eps, c, s, H, scale);
  };
  std::vector<torch::Tensor> in = {x, w};
  auto y = fused_f(in);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{B, H, T, hd}));
  EXPECT_TRUE(torch::equal(y, steps_f(in)));  // same operations, same order: the same bits
  EXPECT_LT(max_abs_diff(y, ref_f(in)), 1e-5);
  auto g = grads_of(fused_f, {x, w}, probe);
  auto g_steps = grads_of(steps_f, {x, w}, probe);
  auto g_ref = grads_of(ref_f, {x, w}, probe);
  EXPECT_TRUE(torch::equal(g[0], g_steps[0]));
  EXPECT_TRUE(torch::equal(g[1], g_steps[1]));
  EXPECT_LT(max_abs_diff(g[0], g_ref[0]), 1e-4);
  EXPECT_LT(max_abs_diff(g[1], g_ref[1]), 1e-3 * g_ref[1].abs().max().item<double>());
}

TEST(FusedNormRope, GradientsMatchCentralDifferences) {
  torch::manual_seed(6);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto angles = torch::randn({2, 3, 4}, opts);
  auto c = angles.cos(), s = angles.sin();
  auto f = [&](std::vector<torch::Tensor>& v) { return norm_rope(v[0], v[1], 1e-6, c, s, 2, 0.7); };
  const std::vector<torch::Tensor> in = {torch::randn({2, 3, 16}, opts),
                                         torch::rand({8}, opts) + 0.5};
  const auto probe = torch::randn({2, 2, 3, 8}, opts);
  expect_matches_numerical_gradient(f, in, 0, probe);
  expect_matches_numerical_gradient(f, in, 1, probe);
}

TEST(FusedNormRope, RefusesAWeightThatIsNotOneHead) {
  auto angles = torch::zeros({1, 2, 2});
  EXPECT_THROW(norm_rope(torch::zeros({1, 2, 8}), torch::ones({8}), 1e-6, angles, angles, 2),
               c10::Error);
}

TEST(FusedSwiglu, HandWorkedValue) {
  // silu(1) * 3 = 3 / (1 + e^-1) = 2.193176.
  auto y = swiglu(torch::tensor({1.0f, 3.0f}));
  EXPECT_NEAR(y[0].item<float>(), 2.193176f, 1e-5);
}

TEST(FusedSwiglu, MatchesReferenceAndCentralDifferences) {
  torch::manual_seed(5);
  auto gu = torch::randn({3, 4, 20});
  auto probe = torch::randn({3, 4, 10});
  EXPECT_LT(max_abs_diff(swiglu(gu), reference_swiglu(gu)), 1e-5);
  auto fused_f = [](std::vector<torch::Tensor>& in) { return swiglu(in[0]); };
  auto ref_f = [](std::vector<torch::Tensor>& in) { return reference_swiglu(in[0]); };
  EXPECT_LT(max_abs_diff(grads_of(fused_f, {gu}, probe)[0], grads_of(ref_f, {gu}, probe)[0]), 1e-5);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  expect_matches_numerical_gradient(fused_f, {torch::randn({5, 12}, opts)}, 0,
                                    torch::randn({5, 6}, opts));
}

TEST(FusedTokenLogprobs, HandWorkedTwoByThree) {
  // Row 0: logsumexp(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.407606, target 2: 3 - 3.407606;
  // softmax = (0.090031, 0.244728, 0.665241), gradient onehot(2) - softmax.
  // Row 1: logsumexp(0, 0, 0) = log 3, target 0: -log 3; gradient (2/3, -1/3, -1/3).
  auto z = torch::tensor({{1.0f, 2.0f, 3.0f}, {0.0f, 0.0f, 0.0f}}).set_requires_grad(true);
  auto lp = token_logprobs(z, torch::tensor({2, 0}, torch::kLong));
  EXPECT_NEAR(lp[0].item<float>(), -0.407606f, 1e-6);
  EXPECT_NEAR(lp[1].item<float>(), -1.098612f, 1e-6);
  lp.sum().backward();
  auto g = z.grad();
  const float want[2][3] = {{-0.090031f, -0.244728f, 0.334759f}, {2.0f / 3, -1.0f / 3, -1.0f / 3}};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(g[i][j].item<float>(), want[i][j], 1e-6) << i << j;
}

TEST(FusedTokenLogprobs, IgnoredTargetsGiveZeroAndNoGradient) {
  auto z = torch::tensor({{1.0f, 2.0f, 3.0f}, {0.5f, 0.0f, -4.0f}}).set_requires_grad(true);
  auto lp = token_logprobs(z, torch::tensor({-100, 1}, torch::kLong));
  EXPECT_EQ(lp[0].item<float>(), 0.0f);
  lp.sum().backward();
  EXPECT_TRUE(torch::equal(z.grad()[0], torch::zeros({3})));
  EXPECT_GT(z.grad()[1].abs().sum().item<float>(), 0.1f);
}

// Random logits [3, 5, V] with some targets ignored; V = 37 leaves a tail after the lane blocks.
std::pair<torch::Tensor, torch::Tensor> random_logits_and_targets(int64_t V, torch::Dtype dtype) {
  auto z = (3 * torch::randn({3, 5, V})).to(dtype);
  auto t = torch::randint(0, V, {3, 5}, torch::kLong);
  t.index_put_({torch::rand({3, 5}) < 0.3}, -100);
  t[0][0] = -1;
  return {z, t};
}

TEST(FusedTokenLogprobs, MatchesCrossEntropyForwardAndBackward) {
  torch::manual_seed(11);
  for (int64_t V : {37, 64, 515}) {
    auto [z, t] = random_logits_and_targets(V, torch::kFloat);
    auto probe = torch::randn({3, 5});
    auto fused_f = [&](std::vector<torch::Tensor>& in) { return token_logprobs(in[0], t); };
    auto ref_f = [&](std::vector<torch::Tensor>& in) { return reference_token_logprobs(in[0], t); };
    EXPECT_LT(max_abs_diff(token_logprobs(z, t), reference_token_logprobs(z, t)), 1e-5) << V;
    EXPECT_LT(max_abs_diff(grads_of(fused_f, {z}, probe)[0], grads_of(ref_f, {z}, probe)[0]), 1e-6)
        << V;
    // The definition the trainers relied on before: -cross_entropy with ignore_index.
    auto t_kept = t.clone();
    t_kept[0][0] = -100;
    auto ce = torch::nn::functional::cross_entropy(
        z.reshape({-1, V}), t_kept.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
    EXPECT_NEAR(-token_logprobs(z, t_kept).sum().item<float>(), ce.item<float>(),
                1e-5 * std::abs(ce.item<float>()));
  }
}

TEST(FusedTokenLogprobs, ExtremeLogitsStayFinite) {
  auto z = torch::tensor({{1000.0f, 0.0f, -1000.0f}, {-1e4f, -1e4f, -1e4f}});
  auto t = torch::tensor({2, 1}, torch::kLong);
  auto lp = token_logprobs(z, t);
  EXPECT_NEAR(lp[0].item<float>(), -2000.0f, 1e-2);
  EXPECT_NEAR(lp[1].item<float>(), -std::log(3.0f), 1e-5);
}

TEST(FusedTokenLogprobs, GradientsMatchCentralDifferences) {
  torch::manual_seed(12);
  auto [z, t] = random_logits_and_targets(21, torch::kDouble);
  auto f = [&](std::vector<torch::Tensor>& v) { return token_logprobs(v[0], t); };
  expect_matches_numerical_gradient(f, {z}, 0, torch::randn({3, 5}, torch::kDouble));
}

TEST(FusedTokenLogprobs, StatsAndBackwardWithEntropyMatchAutogradOfTheDefinition) {
  torch::manual_seed(13);
  auto [z, t] = random_logits_and_targets(70, torch::kDouble);
  auto g_lp = torch::randn({3, 5}, torch::kDouble), g_ent = torch::randn({3, 5}, torch::kDouble);
  auto zr = z.clone().set_requires_grad(true);
  auto logp = torch::log_softmax(zr, -1);
  auto lp_ref = reference_token_logprobs(zr, t);
  auto ent_ref = -(logp.exp() * logp).sum(-1);
  (lp_ref * g_lp + ent_ref * g_ent).sum().backward();

  auto st = token_logprob_stats(z, t, /*entropy=*/true);
  EXPECT_LT(max_abs_diff(st.logprobs, lp_ref), 1e-12);
  EXPECT_LT(max_abs_diff(st.entropy, ent_ref), 1e-12);
  EXPECT_LT(max_abs_diff(st.logsumexp, torch::logsumexp(z, -1)), 1e-12);
  EXPECT_LT(max_abs_diff(token_logprobs_backward(z, t, st, g_lp, g_ent), zr.grad()), 1e-12);
  // Only one of the two gradients; in place over a copy of the logits.
  auto only_lp = token_logprobs_backward(z, t, st, g_lp, torch::Tensor());
  auto copy = z.clone();
  auto in_place = token_logprobs_backward(copy, t, st, g_lp, torch::Tensor(), /*in_place=*/true);
  EXPECT_EQ(in_place.data_ptr(), copy.data_ptr());
  EXPECT_TRUE(torch::equal(in_place, only_lp));
  // The reference path (fused kernels off) agrees.
  set_fused_kernels(false);
  auto ref_st = token_logprob_stats(z, t, true);
  auto ref_g = token_logprobs_backward(z, t, ref_st, g_lp, g_ent);
  set_fused_kernels(true);
  EXPECT_LT(max_abs_diff(ref_st.entropy, st.entropy), 1e-12);
  EXPECT_LT(max_abs_diff(ref_g, zr.grad()), 1e-12);
}

// Float rows on every instruction set the CPU has (switched through policy/kernels/isa.h): each
// within float rounding of the definition in float64 and of the portable rows.
TEST(FusedTokenLogprobs, FloatStatsAndBackwardOnEveryIsaMatchTheDefinition) {
  torch::manual_seed(15);
  auto [z, t] = random_logits_and_targets(515, torch::kFloat);
  auto g_lp = torch::randn({3, 5}), g_ent = torch::randn({3, 5});
  auto zd = z.to(torch::kDouble);
  auto want = token_logprob_stats(zd, t, /*entropy=*/true);
  auto want_g =
      token_logprobs_backward(zd, t, want, g_lp.to(torch::kDouble), g_ent.to(torch::kDouble));
  std::vector<torch::Tensor> portable;
  for (kernels::Isa isa : kernels::cpu_isas()) {
    kernels::IsaScope scope(isa);
    auto st = token_logprob_stats(z, t, /*entropy=*/true);
    auto g = token_logprobs_backward(z, t, st, g_lp, g_ent);
    const std::vector<torch::Tensor> got = {st.logprobs, st.logsumexp, st.entropy, g};
    const std::vector<torch::Tensor> exact = {want.logprobs, want.logsumexp, want.entropy, want_g};
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_LT(max_abs_diff(got[i], exact[i]), 2e-5) << kernels::isa_name(isa) << " " << i;
      if (!portable.empty()) {
        EXPECT_LT(max_abs_diff(got[i], portable[i]), 1e-5) << kernels::isa_name(isa) << " " << i;
      }
    }
    if (portable.empty()) portable = got;
  }
}

TEST(FusedTokenLogprobs, ResultsDoNotDependOnTheThreadCount) {
  torch::manual_seed(14);
  auto z = 2 * torch::randn({300, 130});
  auto t = torch::randint(-1, 130, {300}, torch::kLong);
  auto probe = torch::randn({300});
  auto f = [&](std::vector<torch::Tensor>& in) { return token_logprobs(in[0], t); };
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto lp_one = token_logprobs(z, t);
  auto ent_one = token_logprob_stats(z, t, true).entropy;
  auto one = grads_of(f, {z}, probe);
  at::set_num_threads(2);
  auto lp_two = token_logprobs(z, t);
  auto ent_two = token_logprob_stats(z, t, true).entropy;
  auto two = grads_of(f, {z}, probe);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(lp_one, lp_two));
  EXPECT_TRUE(torch::equal(ent_one, ent_two));
  EXPECT_TRUE(torch::equal(one[0], two[0]));
}

TEST(FusedTokenLogprobs, RefusesTargetsOutsideTheVocabularyAndMismatchedShapes) {
  auto z = torch::zeros({2, 4});
  EXPECT_THROW(token_logprobs(z, torch::tensor({1, 4}, torch::kLong)), c10::Error);
  EXPECT_THROW(token_logprobs(z, torch::tensor({1, 2, 3}, torch::kLong)), c10::Error);
  EXPECT_THROW(token_logprobs(z, torch::tensor({1, 2}, torch::kInt)), c10::Error);
}

TEST(FusedOps, OtherDtypesRunTheReference) {
  torch::manual_seed(6);
  auto x = torch::randn({2, 16}).to(torch::kBFloat16);
  auto w = torch::randn({16}).to(torch::kBFloat16);
  EXPECT_FALSE(has_fused_kernel(x));
  EXPECT_TRUE(torch::equal(rms_norm(x, w, 1e-5), reference_rms_norm(x, w, 1e-5)));
  EXPECT_TRUE(torch::equal(swiglu(x), reference_swiglu(x)));
  auto logits = torch::randn({3, 16}).to(torch::kBFloat16);
  auto targets = torch::tensor({1, -100, 15}, torch::kLong);
  auto lp = token_logprobs(logits, targets);  // computed in float32, as autocast does
  EXPECT_EQ(lp.scalar_type(), torch::kFloat);
  EXPECT_LT(max_abs_diff(lp, token_logprobs(logits.to(torch::kFloat), targets)), 1e-6);
}

TEST(ConcatWeights, CachesWithoutAutogradAndRebuildsAfterAnInPlaceChange) {
  torch::manual_seed(7);
  auto a = torch::randn({2, 3}), b = torch::randn({4, 3});
  ConcatWeights cat;
  torch::Tensor first;
  {
    torch::NoGradGuard no_grad;
    first = cat.get({a, b});
    EXPECT_TRUE(torch::equal(first, torch::cat({a, b}, 0)));
    EXPECT_EQ(cat.get({a, b}).data_ptr(), first.data_ptr());  // reused
    b.mul_(2);
    auto rebuilt = cat.get({a, b});
    EXPECT_TRUE(torch::equal(rebuilt.narrow(0, 2, 4), b));
    // set_data keeps the tensor and its version counter: a widened (or narrowed) weight is seen.
    b.set_data(b.to(torch::kBFloat16));
    a.set_data(a.to(torch::kBFloat16));
    EXPECT_EQ(cat.get({a, b}).scalar_type(), torch::kBFloat16);
    a.set_data(a.to(torch::kFloat));
    b.set_data(b.to(torch::kFloat));
    auto widened = cat.get({a, b});
    EXPECT_EQ(widened.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(widened, torch::cat({a, b}, 0)));
  }
  // A copy cached under InferenceMode is rebuilt for a recorded forward over frozen weights
  // (autograd saves the weight to differentiate the input).
  ConcatWeights frozen;
  {
    c10::InferenceMode inference;
    EXPECT_TRUE(frozen.get({a, b}).is_inference());
  }
  auto input = torch::randn({5, 3}).set_requires_grad(true);
  torch::nn::functional::linear(input, frozen.get({a, b})).sum().backward();
  EXPECT_TRUE(input.grad().defined());
  // Parameters that need gradients: a fresh concatenation that gradients flow through.
  auto p = torch::randn({2, 3}).set_requires_grad(true);
  auto out = cat.get({p, b});
  out.sum().backward();
  ASSERT_TRUE(p.grad().defined());
  EXPECT_TRUE(torch::equal(p.grad(), torch::ones({2, 3})));
}

}  // namespace
}  // namespace rlhf::policy::fused

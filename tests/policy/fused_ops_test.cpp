// The fused kernels against hand-worked numbers, against their reference compositions (forward
// and backward) and against central-difference gradients in float64.
#include "policy/fused_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

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

TEST(FusedOps, OtherDtypesRunTheReference) {
  torch::manual_seed(6);
  auto x = torch::randn({2, 16}).to(torch::kBFloat16);
  auto w = torch::randn({16}).to(torch::kBFloat16);
  EXPECT_FALSE(has_fused_kernel(x));
  EXPECT_TRUE(torch::equal(rms_norm(x, w, 1e-5), reference_rms_norm(x, w, 1e-5)));
  EXPECT_TRUE(torch::equal(swiglu(x), reference_swiglu(x)));
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

// The decoding engine (policy/decoding/fast_decode.h) and its kernels
// (policy/kernels/decode_kernels.h) against hand-worked numbers and against the libtorch path they
// replace.
#include "policy/decoding/fast_decode.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <vector>

#include "common/error.h"
#include "policy/decoding/generation.h"
#include "policy/kernels/decode_kernels.h"
#include "policy/kernels/isa.h"
#include "policy/model/fused_ops.h"
#include "policy/model/lora.h"
#include "policy/model/model.h"
#include "tests/fixtures/tiny_model.h"

namespace rlhf::policy {
namespace {

namespace k = kernels;

// The tiny model (tests/fixtures/tiny_model.h) with vocab 96, SwiGLU size 40 and the given
// width, heads and kv heads.
ModelConfig config(int n_kv_heads, bool tied, int dim = 32, int heads = 4) {
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 96;
  c.dim = dim;
  c.n_heads = heads;
  c.n_kv_heads = n_kv_heads;
  c.hidden_dim = 40;
  c.tie_embeddings = tied;
  return c;
}

using testing::random_model;

torch::Tensor from(const std::vector<float>& v, std::vector<int64_t> sizes) {
  return torch::tensor(v).view(sizes);
}

// The instruction sets this CPU can run (portable first), each made active in turn by IsaScope.
std::vector<k::Isa> isas() { return k::cpu_isas(); }
using k::IsaScope;

TEST(DecodeKernelsTest, MatmulHandWorked) {
  // x = [[1, 2], [3, 4]], w = [[1, 0], [1, -1], [2, 1]] (3 outputs of 2 inputs):
  // x w^T = [[1, -1, 4], [3, -1, 10]]; with accumulate into [[1, 1, 1], [1, 1, 1]]: +1.
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 0, 1, -1, 2, 1};
  const k::PackedWeight packed(w.data(), 3, 2);
  LoopPool pool(2);
  for (k::Isa isa : isas()) {
    IsaScope scope(isa);
    std::vector<float> out(6, 1.0f);
    k::matmul_nt(x.data(), 2, 2, 2, {{&packed, out.data(), 3, true}}, pool);
    EXPECT_EQ(out, (std::vector<float>{2, 0, 5, 4, 0, 11})) << k::isa_name(isa);
    k::matmul_nt(x.data(), 2, 2, 2, {{&packed, out.data(), 3, false}}, pool);
    EXPECT_EQ(out, (std::vector<float>{1, -1, 4, 3, -1, 10})) << k::isa_name(isa);
  }
}

TEST(DecodeKernelsTest, PackedWeightLayout) {
  // w [33, 2]: column j of the output reads row j; panel 1 holds row 32 then 31 zeros per k.
  std::vector<float> w(66);
  for (int j = 0; j < 33; ++j) w[j * 2] = j, w[j * 2 + 1] = 100 + j;
  const k::PackedWeight p(w.data(), 33, 2);
  EXPECT_EQ(p.panels(), 2);
  EXPECT_EQ(p.panel(0)[5], 5.0f);         // k = 0, column 5
  EXPECT_EQ(p.panel(0)[32 + 5], 105.0f);  // k = 1, column 5
  EXPECT_EQ(p.panel(1)[0], 32.0f);
  EXPECT_EQ(p.panel(1)[32], 132.0f);
  EXPECT_EQ(p.panel(1)[1], 0.0f);
}

// Packing row blocks side by side (q, k and v as one weight) equals packing their concatenation,
// and fills caller storage of the advertised size.
TEST(DecodeKernelsTest, PackedWeightFromPartsEqualsTheConcatenation) {
  torch::manual_seed(5);
  auto q = torch::randn({40, 6}), kk = torch::randn({3, 6}), v = torch::randn({30, 6});
  auto all = torch::cat({q, kk, v});
  const k::PackedWeight whole(all.data_ptr<float>(), 73, 6);
  std::vector<float> storage(k::PackedWeight::floats(73, 6), -1.0f);
  EXPECT_EQ(storage.size(), size_t(3 * 32 * 6));
  LoopPool pool(2);
  const k::PackedWeight parts({q.data_ptr<float>(), kk.data_ptr<float>(), v.data_ptr<float>()},
                              {40, 3, 30}, 6, storage.data(), pool);
  ASSERT_EQ(parts.n(), 73);
  ASSERT_EQ(parts.panels(), 3);
  for (int64_t p = 0; p < 3; ++p)
    for (int64_t i = 0; i < 32 * 6; ++i)
      ASSERT_EQ(parts.panel(p)[i], whole.panel(p)[i]) << "panel " << p << " float " << i;
}

// Gate and up packed as pairs with the SwiGLU epilogue: the same bits as the two products followed
// by swiglu(), for sizes with and without a partial pair panel (8, 16, 40) and every tile's rows.
TEST(DecodeKernelsTest, SwiGluEpilogueEqualsProductsThenSwiGlu) {
  torch::manual_seed(8);
  LoopPool pool(2);
  for (int64_t F : {8, 16, 40})
    for (int64_t B : {1, 7, 13, 32}) {
      const int64_t K = 24;
      auto x = torch::randn({B, K}), gate = torch::randn({F, K}), up = torch::randn({F, K});
      std::vector<float> storage(k::PackedWeight::floats(2 * F, K));
      const k::PackedWeight pairs({gate.data_ptr<float>(), up.data_ptr<float>()}, {F, F}, K,
                                  storage.data(), pool, k::PackedWeight::Layout::kPairs);
      ASSERT_EQ(pairs.n(), F);
      const k::PackedWeight g(gate.data_ptr<float>(), F, K), u(up.data_ptr<float>(), F, K);
      for (k::Isa isa : isas()) {
        IsaScope scope(isa);
        std::vector<float> gs(B * F), us(B * F), want(B * F), got(B * F + 3, -7.0f);
        k::matmul_nt(x.data_ptr<float>(), B, K, K,
                     {{&g, gs.data(), F, false}, {&u, us.data(), F, false}}, pool);
        for (int64_t b = 0; b < B; ++b) k::swiglu(&gs[b * F], &us[b * F], &want[b * F], F);
        k::matmul_nt(x.data_ptr<float>(), B, K, K,
                     {{&pairs, got.data(), F, false, k::MatmulJob::Epilogue::kSwiGlu}}, pool);
        EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + B * F), want)
            << "F " << F << " B " << B << " " << k::isa_name(isa);
        EXPECT_EQ(got[B * F], -7.0f);  // nothing written past the outputs
      }
    }
  // A pairs weight needs the epilogue, and the epilogue a pairs weight.
  std::vector<float> w(16 * 4), storage(k::PackedWeight::floats(32, 4)), x(4), out(16);
  const k::PackedWeight rows(w.data(), 16, 4);
  const k::PackedWeight pairs({w.data(), w.data()}, {16, 16}, 4, storage.data(), pool,
                              k::PackedWeight::Layout::kPairs);
  EXPECT_THROW(k::matmul_nt(x.data(), 1, 4, 4, {{&pairs, out.data(), 16, false}}, pool), Error);
  EXPECT_THROW(
      k::matmul_nt(x.data(), 1, 4, 4,
                   {{&rows, out.data(), 16, false, k::MatmulJob::Epilogue::kSwiGlu}}, pool),
      Error);
}

TEST(DecodeKernelsTest, MatmulRejectsAWeightOfAnotherInnerSize) {
  std::vector<float> x(4), w(6), out(3);
  const k::PackedWeight packed(w.data(), 2, 3);
  LoopPool pool(1);
  EXPECT_THROW(k::matmul_nt(x.data(), 1, 4, 4, {{&packed, out.data(), 2, false}}, pool), Error);
}

// Every tile shape and remainder (rows 1..13 and 32: the AVX2 tiles take 6 rows, the AVX-512
// tiles 12), output sizes that leave a partial panel (7, 33, 100) or none (32, 64), inner sizes
// odd and even; two jobs writing side by side into one output. Each instruction set against torch,
// and all of them bit for bit against the portable loops; each row against the same row computed
// alone (batch 1).
TEST(DecodeKernelsTest, MatmulMatchesTorchOnEveryIsaForManyShapes) {
  LoopPool pool(3);
  torch::manual_seed(1);
  for (int64_t B : {1, 2, 5, 6, 7, 11, 12, 13, 32})
    for (int64_t K : {1, 13, 64})
      for (int64_t N : {7, 32, 33, 64, 100}) {
        auto x = torch::randn({B, K + 3}).narrow(1, 0, K);  // row stride K + 3
        auto w1 = torch::randn({N, K}), w2 = torch::randn({5, K});
        const k::PackedWeight p1(w1.data_ptr<float>(), N, K), p2(w2.data_ptr<float>(), 5, K);
        auto before = torch::randn({B, N + 5});
        auto want = torch::cat({x.matmul(w1.t()), before.narrow(1, N, 5) + x.matmul(w2.t())}, 1);
        torch::Tensor portable;
        for (k::Isa isa : isas()) {
          IsaScope scope(isa);
          auto out = before.clone();
          k::matmul_nt(x.data_ptr<float>(), B, K, K + 3,
                       {{&p1, out.data_ptr<float>(), N + 5, false},
                        {&p2, out.data_ptr<float>() + N, N + 5, true}},
                       pool);
          const std::string where = std::string(k::isa_name(isa)) + " " + std::to_string(B) + "x" +
                                    std::to_string(K) + "x" + std::to_string(N);
          EXPECT_TRUE(torch::allclose(out, want, 1e-4, 1e-4)) << where;
          if (!portable.defined()) portable = out;
          EXPECT_TRUE(torch::equal(out, portable)) << where;
          auto last = before[B - 1].clone();  // the last row alone
          k::matmul_nt(x[B - 1].data_ptr<float>(), 1, K, K,
                       {{&p1, last.data_ptr<float>(), N + 5, false},
                        {&p2, last.data_ptr<float>() + N, N + 5, true}},
                       pool);
          EXPECT_TRUE(torch::equal(last, out[B - 1])) << where;
        }
      }
}

TEST(DecodeKernelsTest, AttendHandWorked) {
  // Heads of 8 (the vector kernel) and of 1 (the portable loops): q = e0; keys 0, ln 2, 5 (masked)
  // along e0; values 3, 6 and 3e38 (masked) in every lane. Weights e^0 : e^ln2 = 1 : 2 over the
  // unmasked keys -> 1/3 * 3 + 2/3 * 6 = 5. A masked key must weigh exactly 0: even 1e-38 would
  // show against its value.
  for (int64_t hd : {1, 8})
    for (k::Isa isa : isas()) {
      IsaScope scope(isa);
      std::vector<float> q(hd, 0.0f), keys(3 * hd, 0.0f), values(3 * hd), scratch(3), out(hd);
      q[0] = 1;
      keys[hd] = std::log(2.0f);
      keys[2 * hd] = 5;
      for (int64_t i = 0; i < hd; ++i)
        values[i] = 3, values[hd + i] = 6, values[2 * hd + i] = 3e38f;
      std::vector<int64_t> mask = {1, 1, 0};
      k::attend(q.data(), keys.data(), values.data(), mask.data(), 3, hd, scratch.data(),
                out.data());
      for (int64_t i = 0; i < hd; ++i)
        EXPECT_NEAR(out[i], 5.0f, 1e-5) << "hd " << hd << " " << k::isa_name(isa);
    }
}

// Head sizes 8 and 32 take the AVX2 kernel (where the CPU has it), 6 the portable loops; 19 keys
// cover the 8-key blocks and the tail.
TEST(DecodeKernelsTest, AttendMatchesMaskedSoftmax) {
  torch::manual_seed(2);
  for (int64_t hd : {6, 8, 32}) {
    const int64_t L = 19;
    auto q = torch::randn({hd}), keys = torch::randn({L, hd}), values = torch::randn({L, hd});
    auto mask = (torch::rand({L}) > 0.3).to(torch::kLong);
    mask[L - 1] = 1;
    mask[0] = 0;
    auto scores = keys.matmul(q).masked_fill(mask == 0, -INFINITY);
    auto want = torch::softmax(scores, 0).matmul(values);
    for (k::Isa isa : isas()) {
      IsaScope scope(isa);
      std::vector<float> scratch(L), out(hd);
      k::attend(q.data_ptr<float>(), keys.data_ptr<float>(), values.data_ptr<float>(),
                mask.data_ptr<int64_t>(), L, hd, scratch.data(), out.data());
      EXPECT_TRUE(torch::allclose(torch::tensor(out), want, 1e-5, 1e-5))
          << "hd " << hd << " " << k::isa_name(isa);
    }
  }
}

// The newest position from last_key / last_value: the cache's row for it is never read (here it
// holds NaN), and the result equals attention over the cache with that row filled in.
TEST(DecodeKernelsTest, AttendReadsTheNewestPositionFromItsOwnRow) {
  torch::manual_seed(6);
  for (int64_t hd : {6, 32})
    for (int64_t L : {1, 9, 17}) {
      auto q = torch::randn({hd}), keys = torch::randn({L, hd}), values = torch::randn({L, hd});
      auto mask = torch::ones({L}, torch::kLong);
      auto want = torch::softmax(keys.matmul(q), 0).matmul(values);
      auto last_key = keys[L - 1].clone(), last_value = values[L - 1].clone();
      keys[L - 1].fill_(NAN);
      values[L - 1].fill_(NAN);
      for (k::Isa isa : isas()) {
        IsaScope scope(isa);
        std::vector<float> scratch(L), out(hd);
        k::attend(q.data_ptr<float>(), keys.data_ptr<float>(), values.data_ptr<float>(),
                  mask.data_ptr<int64_t>(), L, hd, scratch.data(), out.data(),
                  last_key.data_ptr<float>(), last_value.data_ptr<float>());
        EXPECT_TRUE(torch::allclose(torch::tensor(out), want, 1e-5, 1e-5))
            << "hd " << hd << " L " << L << " " << k::isa_name(isa);
      }
    }
}

// attend_group (the G query heads of one kv head together) gives every head exactly attend()'s bits
// for that head alone, on every instruction set: head sizes 6 (portable loops), 8, 24 (AVX2 only),
// 16, 64, 128 (AVX-512 value sums); group sizes 1, 2, 3 (an odd one: AVX2 scores), 4 and 10 (split
// into kernel calls of at most 8); contexts with and without whole blocks of 8 keys; masked
// positions; the newest position from its own row (the cache's row NaN) or from the cache.
TEST(DecodeKernelsTest, AttendGroupGivesEachHeadAttendsBits) {
  torch::manual_seed(21);
  for (int64_t hd : {6, 8, 16, 24, 64, 128})
    for (int64_t G : {1, 2, 3, 4, 10})
      for (int64_t L : {1, 9, 19, 40})
        for (bool own_row : {false, true}) {
          auto q = torch::randn({G, hd}) * 0.5, keys = torch::randn({L, hd});
          auto values = torch::randn({L, hd});
          auto mask = (torch::rand({L}) > 0.3).to(torch::kLong);
          mask[L - 1] = 1;
          if (L > 1) mask[0] = 0;
          auto last_key = keys[L - 1].clone(), last_value = values[L - 1].clone();
          if (own_row) keys[L - 1].fill_(NAN), values[L - 1].fill_(NAN);
          const float* lk = own_row ? last_key.data_ptr<float>() : nullptr;
          const float* lv = own_row ? last_value.data_ptr<float>() : nullptr;
          for (k::Isa isa : isas()) {
            IsaScope scope(isa);
            std::vector<float> scratch(G * L), out(G * hd), alone(G * hd);
            k::attend_group(q.data_ptr<float>(), G, keys.data_ptr<float>(),
                            values.data_ptr<float>(), mask.data_ptr<int64_t>(), L, hd,
                            scratch.data(), out.data(), lk, lv);
            for (int64_t g = 0; g < G; ++g)
              k::attend(q.data_ptr<float>() + g * hd, keys.data_ptr<float>(),
                        values.data_ptr<float>(), mask.data_ptr<int64_t>(), L, hd, scratch.data(),
                        alone.data() + g * hd, lk, lv);
            EXPECT_EQ(out, alone) << "hd " << hd << " G " << G << " L " << L << " own row "
                                  << own_row << " " << k::isa_name(isa);
          }
        }
}

TEST(DecodeKernelsTest, RmsNormRopeSwigluMatchTheFusedOps) {
  torch::manual_seed(3);
  auto x = torch::randn({3, 16}), w = torch::rand({16}) + 0.5;
  std::vector<float> y(48);
  k::rms_norm_rows(x.data_ptr<float>(), w.data_ptr<float>(), y.data(), 3, 16, 1e-5);
  EXPECT_TRUE(torch::equal(from(y, {3, 16}), fused::reference_rms_norm(x, w, 1e-5)) ||
              torch::allclose(from(y, {3, 16}), fused::reference_rms_norm(x, w, 1e-5), 1e-6, 1e-6));

  // Two heads of 8 at one position; fused::rope takes [B=1, T=1, H * hd] and angles [1, 1, hd/2].
  auto q = torch::randn({16}), angles = torch::rand({4}) * 3;
  auto cos = angles.cos(), sin = angles.sin();
  auto want =
      fused::reference_rope(q.view({1, 1, 16}), cos.view({1, 1, 4}), sin.view({1, 1, 4}), 2, 0.5)
          .reshape({16});
  auto got = q.clone();
  k::rope_heads(got.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), 2, 8, 0.5f);
  EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6));

  auto gate = torch::randn({10}) * 3, up = torch::randn({10});
  std::vector<float> act(10);
  k::swiglu(gate.data_ptr<float>(), up.data_ptr<float>(), act.data(), 10);
  EXPECT_TRUE(torch::allclose(torch::tensor(act), fused::reference_swiglu(torch::cat({gate, up})),
                              1e-5, 1e-6));
}

TEST(DecodeKernelsTest, SampleRowHandWorked) {
  // logits [0, 2 ln 3] at temperature 2 -> x = [0, ln 3], probabilities 1/4 and 3/4.
  std::vector<float> logits = {0.0f, 2 * std::log(3.0f)}, scratch(2);
  auto low = k::sample_row(logits.data(), 2, 2.0f, 0.2, scratch.data());  // 0.2 < 1/4
  EXPECT_EQ(low.id, 0);
  EXPECT_NEAR(low.logprob, std::log(0.25f), 1e-6);
  auto high = k::sample_row(logits.data(), 2, 2.0f, 0.3, scratch.data());
  EXPECT_EQ(high.id, 1);
  EXPECT_NEAR(high.logprob, std::log(0.75f), 1e-6);
  auto greedy = k::sample_row(logits.data(), 2, 1.0f, -1.0, scratch.data());
  EXPECT_EQ(greedy.id, 1);
  EXPECT_NEAR(greedy.logprob, -std::log1p(1.0f / 9.0f), 1e-6);  // 9 / (1 + 9)
  // A token whose weight underflows to 0 is never drawn, even where the target sits on its edge.
  std::vector<float> gap = {0.0f, -200.0f, 0.0f};
  std::vector<float> scratch3(3);
  EXPECT_EQ(k::sample_row(gap.data(), 3, 1.0f, 0.5, scratch3.data()).id, 2);
  EXPECT_EQ(k::sample_row(gap.data(), 3, 1.0f, 0.4999, scratch3.data()).id, 0);
}

// The same draws as generate()'s libtorch sampling (log_softmax, exp, cumulative sum, search) for
// the same uniforms, over 4,099 logits (the AVX2 exp and the portable tail), except where u lands
// within float rounding (~1e-6 of the total) of a boundary between two of the 4,099 tokens: about
// 1 draw in 1,000 here.
TEST(DecodeKernelsTest, SampleRowMatchesTheLibtorchDraw) {
  torch::manual_seed(4);
  const int64_t V = 4099;
  auto logits = torch::randn({V}) * 3;
  std::vector<float> scratch(V);
  auto cdf = torch::log_softmax(logits / 0.7, 0).exp().to(torch::kDouble).cumsum(0);
  int same = 0;
  for (int i = 0; i < 500; ++i) {
    const double u = (i + 0.5) / 500;
    auto want =
        torch::searchsorted(cdf, torch::tensor({u * cdf[V - 1].item<double>()}, torch::kDouble),
                            false, true)
            .item<int64_t>();
    auto got = k::sample_row(logits.data_ptr<float>(), V, 0.7f, u, scratch.data());
    same += got.id == want;
    EXPECT_NEAR(got.logprob, (torch::log_softmax(logits / 0.7, 0)[got.id]).item<float>(), 1e-5);
  }
  EXPECT_GE(same, 495);
}

// sample_rows over 7 rows (a group of 4 interleaved running sums and one of 3; greedy rows among
// them) gives each row what sample_row gives it alone, to the bit, on every instruction set; and
// the AVX-512 exponentials and sums are those of AVX2 (the same draws and log-probs).
TEST(DecodeKernelsTest, SampleRowsEqualsSampleRowForEachRowOnEveryIsa) {
  torch::manual_seed(6);
  const int64_t V = 4099, R = 7;
  auto logits = (torch::randn({R, V}) * 3).contiguous();
  logits[2][5] = -INFINITY;  // a masked token
  const std::vector<double> u = {0.1, -1.0, 0.5, 0.999, 0.0, -1.0, 0.73};
  std::map<k::Isa, std::vector<k::RowSample>> by_isa;
  for (k::Isa isa : isas()) {
    IsaScope scope(isa);
    for (float temperature : {1.0f, 0.7f}) {
      std::vector<float> scratch(R * V), one(V);
      std::vector<k::RowSample> all(R);
      k::sample_rows(logits.data_ptr<float>(), R, V, temperature, u.data(), scratch.data(),
                     all.data());
      for (int64_t r = 0; r < R; ++r) {
        auto alone = k::sample_row(logits[r].data_ptr<float>(), V, temperature, u[r], one.data());
        EXPECT_EQ(all[r].id, alone.id) << "row " << r << " " << k::isa_name(isa);
        EXPECT_EQ(all[r].logprob, alone.logprob) << "row " << r << " " << k::isa_name(isa);
        if (u[r] < 0) {
          EXPECT_EQ(all[r].id, logits[r].argmax().item<int64_t>()) << "row " << r;
        }
        by_isa[isa].push_back(all[r]);
      }
    }
  }
  if (by_isa.count(k::Isa::kAvx512) && by_isa.count(k::Isa::kAvx2)) {
    const auto &a = by_isa[k::Isa::kAvx2], &b = by_isa[k::Isa::kAvx512];
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].id, b[i].id) << i;
      EXPECT_EQ(a[i].logprob, b[i].logprob) << i;
    }
  }
}

// Prefills left-padded prompts through libtorch, then decodes the same tokens through the engine
// and through hidden_states + logits_from_hidden on a copy of the cache; returns the largest
// logit difference over `steps` steps.
double engine_vs_libtorch(Transformer& m, int steps, LoopPool& pool) {
  torch::InferenceMode guard;
  auto ids = torch::randint(3, m->config().vocab_size, {3, 5}, torch::kLong);
  auto mask = torch::ones({3, 5}, torch::kLong);
  mask[1][0] = 0;
  mask[1][1] = 0;  // row 1 left-padded by two
  KVCache a, b;
  a.capacity = b.capacity = 5 + steps;
  m->hidden_states(ids, mask, &a);
  m->hidden_states(ids, mask, &b);
  EXPECT_TRUE(DecodeEngine::supports(m, a));
  DecodeEngine engine(m, a, pool);
  double worst = 0;
  for (int s = 0; s < steps; ++s) {
    auto next = torch::randint(3, m->config().vocab_size, {3}, torch::kLong);
    auto fast = engine.step(next).clone();
    auto slow = m->logits_from_hidden(m->hidden_states(next.view({3, 1}), {}, &b).select(1, 0));
    worst = std::max(worst, (fast - slow).abs().max().item<double>());
    EXPECT_EQ(a.length, b.length);
    EXPECT_TRUE(torch::equal(a.next_position, b.next_position));
    EXPECT_TRUE(torch::equal(a.attention_mask, b.attention_mask));
  }
  return worst;
}

// Every instruction set; qkv widths (48, 64, 96 outputs) and the SwiGLU pair (80) that end in a
// partial panel.
TEST(DecodeEngineTest, StepEqualsLibtorchPath) {
  LoopPool pool(2);
  for (k::Isa isa : isas()) {
    IsaScope scope(isa);
    for (int kv : {4, 2, 1})
      for (bool tied : {false, true}) {
        auto m = random_model(config(kv, tied), 10 + kv);
        EXPECT_LT(engine_vs_libtorch(m, 12, pool), 1e-4)
            << "kv heads " << kv << " tied " << tied << " " << k::isa_name(isa);
      }
    auto wide = random_model(config(2, false, 64, 2), 7);  // head size 32: the vector attention
    EXPECT_LT(engine_vs_libtorch(wide, 12, pool), 1e-4) << k::isa_name(isa);
  }
}

// Grouped-query models through the engine (attend_group: the heads of a kv head attend together)
// against the libtorch KV-cache decoder on every instruction set: logits within 1e-5 of the
// largest logit and the same greedy ids at every step. Groups of 2 with head size 64 (the
// Qwen3-0.6B layout's) and 16, of 3 with head size 32, and a qwen3 model (q/k norms, explicit head
// size 32: q wider than the model).
TEST(DecodeEngineTest, GroupedQueryHeadsMatchTheKvCacheDecoder) {
  std::vector<std::pair<std::string, ModelConfig>> models = {
      {"G 2 hd 64", config(2, false, 256, 4)},
      {"G 2 hd 16", config(2, true, 64, 4)},
      {"G 3 hd 32", config(2, false, 192, 6)}};
  ModelConfig qwen3 = config(2, false, 32, 4);
  qwen3.model_type = "qwen3";
  qwen3.qk_norm = true;
  qwen3.explicit_head_dim = 32;
  models.push_back({"qwen3 G 2 hd 32", qwen3});
  LoopPool pool(2);
  for (k::Isa isa : isas()) {
    IsaScope scope(isa);
    for (const auto& [name, c] : models) {
      auto m = random_model(c, 31);
      torch::InferenceMode guard;
      auto ids = torch::randint(3, 96, {3, 5}, torch::kLong);
      auto mask = torch::ones({3, 5}, torch::kLong);
      mask[1].narrow(0, 0, 2).zero_();  // row 1 left-padded by two
      KVCache a, b;
      a.capacity = b.capacity = 5 + 14;
      DecodeEngine engine(m, a, pool);  // the prompt through the engine too (a prefill)
      auto fast = engine.feed(ids, mask).clone();
      auto slow = m->logits_from_hidden(m->hidden_states(ids, mask, &b).select(1, 4));
      for (int s = 0; s <= 14; ++s) {
        const double scale = slow.abs().max().item<double>();
        EXPECT_LE((fast - slow).abs().max().item<double>(), 1e-5 * scale)
            << name << " step " << s << " " << k::isa_name(isa);
        auto next = slow.argmax(-1);
        ASSERT_TRUE(torch::equal(fast.argmax(-1), next)) << name << " step " << s;
        if (s == 14) break;
        fast = engine.step(next).clone();
        slow = m->logits_from_hidden(m->hidden_states(next.view({3, 1}), {}, &b).select(1, 0));
      }
    }
  }
}

// Bit-equal logits and caches for 1, 2 and 3 threads: at batch 4 every loop splits across the
// threads; at batch 25 each decoding step runs in row groups (12 + 13 rows, 8 + 8 + 9), one thread
// per group, and once more with row groups switched off (every loop split across 2 threads).
TEST(DecodeEngineTest, ResultsDoNotDependOnTheThreadCount) {
  auto m = random_model(config(2, false), 5);
  torch::InferenceMode guard;
  ASSERT_TRUE(DecodeEngine::row_groups_on());  // the default
  for (int64_t B : {4, 25}) {
    auto ids = torch::randint(3, 96, {B, 3}, torch::kLong);
    std::vector<torch::Tensor> steps, logits, keys;
    for (int s = 0; s < 6; ++s) steps.push_back(torch::randint(3, 96, {B}, torch::kLong));
    for (int run = 0; run < 4; ++run) {
      const int threads = run < 3 ? run + 1 : 2;
      const bool was = DecodeEngine::set_row_groups(run < 3);
      LoopPool pool(threads);
      KVCache cache;
      DecodeEngine engine(m, cache, pool);
      engine.feed(ids);
      torch::Tensor last;
      for (const auto& next : steps) last = engine.step(next).clone();
      logits.push_back(last);
      keys.push_back(cache.keys.back().clone());
      DecodeEngine::set_row_groups(was);
    }
    for (int i : {1, 2, 3}) {
      EXPECT_TRUE(torch::equal(logits[0], logits[i])) << "batch " << B << ", run " << i;
      EXPECT_TRUE(torch::equal(keys[0], keys[i])) << "batch " << B << ", run " << i;
    }
  }
}

// A cache at capacity is grown through the libtorch path, and the engine goes on after it.
// The prompt through the engine (feed() on an empty cache: a prefill of left-padded rows, then a
// chunk of three more tokens with a pad in it) against hidden_states with the same cache: the
// logits after each row's last token, the cache's bookkeeping, and the keys and values at every
// real position; then decoding continues alike.
TEST(DecodeEngineTest, FeedEqualsHiddenStatesForPromptsAndChunks) {
  LoopPool pool(2);
  for (k::Isa isa : isas()) {
    IsaScope scope(isa);
    auto m = random_model(config(2, false, 64, 2), 12);  // head size 32: the vector attention
    torch::InferenceMode guard;
    auto ids = torch::randint(3, 96, {3, 6}, torch::kLong);
    auto mask = torch::ones({3, 6}, torch::kLong);
    mask[1].narrow(0, 0, 4).zero_();  // row 1: two real tokens after four pads
    mask[2][0] = 0;
    KVCache a, b;
    a.capacity = b.capacity = 16;
    DecodeEngine engine(m, a, pool);
    auto fast = engine.feed(ids, mask).clone();
    auto slow = m->logits_from_hidden(m->hidden_states(ids, mask, &b).select(1, 5));
    EXPECT_LT((fast - slow).abs().max().item<double>(), 1e-4) << k::isa_name(isa);
    auto chunk = torch::randint(3, 96, {3, 3}, torch::kLong);
    auto chunk_mask = torch::ones({3, 3}, torch::kLong);
    chunk_mask[0][1] = 0;  // a pad between real tokens
    fast = engine.feed(chunk, chunk_mask).clone();
    slow = m->logits_from_hidden(m->hidden_states(chunk, chunk_mask, &b).select(1, 2));
    EXPECT_LT((fast - slow).abs().max().item<double>(), 1e-4) << k::isa_name(isa);
    ASSERT_EQ(a.length, 9);
    ASSERT_EQ(b.length, 9);
    EXPECT_TRUE(torch::equal(a.next_position, b.next_position));
    EXPECT_TRUE(torch::equal(a.attention_mask, b.attention_mask));
    auto real = a.attention_mask.to(torch::kBool).view({3, 1, 9, 1});
    for (size_t l = 0; l < a.keys.size(); ++l)
      for (auto pair :
           {std::make_pair(a.keys[l], b.keys[l]), std::make_pair(a.values[l], b.values[l])}) {
        auto diff = (pair.first.narrow(2, 0, 9) - pair.second.narrow(2, 0, 9)).abs();
        EXPECT_LT(diff.masked_fill(real.logical_not(), 0).max().item<double>(), 1e-4)
            << "layer " << l << " " << k::isa_name(isa);
      }
    for (int s = 0; s < 3; ++s) {
      auto next = torch::randint(3, 96, {3}, torch::kLong);
      fast = engine.step(next).clone();
      slow = m->logits_from_hidden(m->hidden_states(next.view({3, 1}), {}, &b).select(1, 0));
      EXPECT_LT((fast - slow).abs().max().item<double>(), 1e-4) << k::isa_name(isa);
    }
  }
}

TEST(DecodeEngineTest, FullCacheGrowsAndDecodingContinues) {
  auto m = random_model(config(2, false), 6);
  torch::InferenceMode guard;
  auto ids = torch::randint(3, 96, {2, 4}, torch::kLong);
  KVCache cache;
  cache.capacity = 5;
  m->hidden_states(ids, {}, &cache);
  DecodeEngine engine(m, cache, shared_loop_pool());
  std::vector<int64_t> fed;
  torch::Tensor last;
  for (int s = 0; s < 6; ++s) {
    last = engine.step(torch::full({2}, 20 + s, torch::kLong)).clone();
    fed.push_back(20 + s);
  }
  EXPECT_EQ(cache.length, 10);
  EXPECT_GE(cache.capacity, 10);
  auto all = torch::cat({ids, torch::tensor(fed).view({1, 6}).expand({2, 6})}, 1);
  auto want = m->forward(all).select(1, 9);
  EXPECT_LT((last - want).abs().max().item<double>(), 1e-4);
}

// LoRA re-parametrises the projections (non-leaf weights): the engine reads the effective ones.
TEST(DecodeEngineTest, UsesLoraEffectiveWeights) {
  auto m = random_model(config(2, false), 8);
  LoraOptions lo;
  lo.targets = {"q", "v", "down"};
  LoraAdapters lora(m, lo);
  {
    torch::NoGradGuard g;
    for (auto& p : lora.parameters()) p.normal_(0.0, 0.3);
  }
  lora.refresh(false);
  LoopPool pool(2);
  EXPECT_LT(engine_vs_libtorch(m, 6, pool), 1e-4);
}

TEST(DecodeEngineTest, SupportsOnlyCpuFloat32WithFusedKernelsOn) {
  auto m = random_model(config(2, false), 9);
  torch::InferenceMode guard;
  auto ids = torch::randint(3, 96, {1, 3}, torch::kLong);
  KVCache empty;
  EXPECT_TRUE(DecodeEngine::supports(m, empty));  // feed() runs the prefill
  KVCache empty_bf16;
  empty_bf16.dtype = torch::kBFloat16;
  EXPECT_FALSE(DecodeEngine::supports(m, empty_bf16));
  KVCache f32;
  m->hidden_states(ids, {}, &f32);
  KVCache bf16 = f32;  // as under bf16 autocast (policy/runtime/device.h)
  for (auto& t : bf16.keys) t = t.to(torch::kBFloat16);
  for (auto& t : bf16.values) t = t.to(torch::kBFloat16);
  EXPECT_TRUE(DecodeEngine::supports(m, f32));
  EXPECT_FALSE(DecodeEngine::supports(m, bf16));
  const bool was = fused::set_fused_kernels(false);
  EXPECT_FALSE(DecodeEngine::supports(m, f32));
  fused::set_fused_kernels(was);
}

// generate() with the engine and with the libtorch layers (fused kernels off) samples the same
// tokens for the same seed.
TEST(DecodeEngineTest, GenerateSamplesTheSameWithAndWithoutTheEngine) {
  auto m = random_model(config(2, false), 11);
  SamplingOptions o;
  o.max_new_tokens = 20;
  o.temperature = 0.9f;
  o.seed = 3;
  o.eos_id = -1;
  std::vector<std::vector<int64_t>> prompts = {{1, 4, 5}, {1}, {1, 9, 9, 9, 9}};
  auto fast = generate(m, prompts, o);
  const bool was = fused::set_fused_kernels(false);
  auto slow = generate(m, prompts, o);
  fused::set_fused_kernels(was);
  EXPECT_TRUE(torch::equal(fast.response_ids, slow.response_ids));
  EXPECT_LT((fast.response_logprobs - slow.response_logprobs).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace rlhf::policy

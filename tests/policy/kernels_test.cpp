// The CPU kernels of policy/kernels/ without libtorch: the one instruction-set dispatch (isa.h),
// and every kernel on every instruction set this CPU has against its portable reference twin,
// switched through that dispatch (decode_kernels.h, logprob_rows.h). The twins themselves are
// checked against plain double-precision definitions here and against libtorch in
// policy_fast_decode_test and policy_fused_ops_test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "policy/kernels/decode_kernels.h"
#include "policy/kernels/isa.h"
#include "policy/kernels/logprob_rows.h"

namespace rlhf::policy::kernels {
namespace {

std::vector<float> random_floats(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// |a - b| <= tol * max(1, |b|), element by element.
void expect_close(const std::vector<float>& a, const std::vector<float>& b, double tol,
                  const std::string& where) {
  ASSERT_EQ(a.size(), b.size()) << where;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(std::abs(double(a[i]) - b[i]), tol * std::max(1.0, std::abs(double(b[i]))))
        << where << " at " << i << ": " << a[i] << " vs " << b[i];
}

// Runs fn() on every instruction set the CPU has (portable first) and returns the results.
template <typename Fn>
auto on_every_isa(Fn&& fn) {
  std::vector<decltype(fn())> results;
  for (Isa isa : cpu_isas()) {
    IsaScope scope(isa);
    EXPECT_EQ(active_isa(), isa);
    results.push_back(fn());
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// The dispatch.

TEST(IsaTest, TheCpuIsasRunFromPortableToTheBestOne) {
  const std::vector<Isa> all = cpu_isas();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front(), Isa::kPortable);
  EXPECT_EQ(all.back(), cpu_isa());
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end()));
  EXPECT_LE(active_isa(), cpu_isa());
}

TEST(IsaTest, RlhfCpuIsaNamesAnInstructionSetCappedAtTheCpu) {
  EXPECT_EQ(isa_from_env(nullptr, Isa::kAvx512), Isa::kAvx512);
  EXPECT_EQ(isa_from_env("", Isa::kAvx2), Isa::kAvx2);
  EXPECT_EQ(isa_from_env("portable", Isa::kAvx512), Isa::kPortable);
  EXPECT_EQ(isa_from_env("avx2", Isa::kAvx512), Isa::kAvx2);
  EXPECT_EQ(isa_from_env("avx512", Isa::kAvx512), Isa::kAvx512);
  EXPECT_EQ(isa_from_env("avx512", Isa::kAvx2), Isa::kAvx2);  // capped at what the CPU runs
  EXPECT_EQ(isa_from_env("avx2", Isa::kPortable), Isa::kPortable);
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
    EXPECT_EQ(isa_from_env(isa_name(isa), Isa::kAvx512), isa);
}

TEST(IsaTest, AnUnknownRlhfCpuIsaIsAnErrorNamingTheAcceptedValues) {
  for (const char* bad : {"bogus", "AVX2", "avx", "sse2", " avx2"}) {
    try {
      isa_from_env(bad, Isa::kAvx512);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("RLHF_CPU_ISA='" + std::string(bad) + "'"), std::string::npos) << what;
      EXPECT_NE(what.find("portable, avx2 or avx512"), std::string::npos) << what;
    }
  }
}

TEST(IsaTest, SetIsaCapsAtTheCpuAndIsaScopeRestores) {
  const Isa before = active_isa();
  {
    IsaScope scope(Isa::kAvx512);
    EXPECT_EQ(active_isa(), cpu_isa());  // at most what the CPU runs
    {
      IsaScope inner(Isa::kPortable);
      EXPECT_EQ(active_isa(), Isa::kPortable);
    }
    EXPECT_EQ(active_isa(), cpu_isa());
  }
  EXPECT_EQ(active_isa(), before);
  const Isa previous = set_isa(Isa::kPortable);
  EXPECT_EQ(previous, before);
  EXPECT_EQ(set_isa(previous), Isa::kPortable);
}

// ---------------------------------------------------------------------------------------------
// The decoding kernels against their portable twins.

// Every tile shape and remainder, partial and whole panels, accumulating or not: the same bits on
// every instruction set (one fused multiply-add chain per output).
TEST(DecodeKernelsOnEveryIsa, MatmulIsBitIdenticalToThePortableTwin) {
  LoopPool pool(2);
  for (int64_t B : {1, 3, 6, 7, 12, 13, 32})
    for (int64_t K : {1, 8, 13})
      for (int64_t N : {5, 32, 33, 70}) {
        const auto x = random_floats(B * K, 1), w = random_floats(N * K, 2);
        const PackedWeight packed(w.data(), N, K);
        const auto results = on_every_isa([&] {
          std::vector<float> out = random_floats(B * N + N, 3);
          matmul_nt(x.data(), B, K, K, {{&packed, out.data(), N, true}}, pool);
          matmul_nt(x.data(), B, K, K, {{&packed, out.data() + N / 2, N, true}}, pool);
          return out;
        });
        for (size_t i = 1; i < results.size(); ++i)
          EXPECT_EQ(results[i], results[0])
              << isa_name(cpu_isas()[i]) << " " << B << "x" << K << "x" << N;
      }
}

TEST(DecodeKernelsOnEveryIsa, SwigluEpilogueMatchesThePortableTwin) {
  LoopPool pool(2);
  const int64_t F = 40, K = 24, B = 7;
  const auto x = random_floats(B * K, 4), gate = random_floats(F * K, 5),
             up = random_floats(F * K, 6);
  std::vector<float> storage(PackedWeight::floats(2 * F, K));
  const PackedWeight pairs({gate.data(), up.data()}, {F, F}, K, storage.data(), pool,
                           PackedWeight::Layout::kPairs);
  const auto results = on_every_isa([&] {
    std::vector<float> out(B * F);
    matmul_nt(x.data(), B, K, K, {{&pairs, out.data(), F, false, MatmulJob::Epilogue::kSwiGlu}},
              pool);
    return out;
  });
  for (size_t i = 1; i < results.size(); ++i)
    expect_close(results[i], results[0], 1e-6, isa_name(cpu_isas()[i]));
}

TEST(DecodeKernelsOnEveryIsa, DotRmsNormAndSwigluMatchThePortableTwins) {
  for (int64_t n : {1, 7, 8, 29, 64, 1000}) {
    const auto a = random_floats(n, 7), b = random_floats(n, 8), w = random_floats(n, 9);
    const auto results = on_every_isa([&] {
      std::vector<float> out = {dot(a.data(), b.data(), n)};
      std::vector<float> y(2 * n);  // two rows: a and b
      std::vector<float> rows(a);
      rows.insert(rows.end(), b.begin(), b.end());
      rms_norm_rows(rows.data(), w.data(), y.data(), 2, n, 1e-5);
      out.insert(out.end(), y.begin(), y.end());
      std::vector<float> s(n);
      swiglu(a.data(), b.data(), s.data(), n);
      out.insert(out.end(), s.begin(), s.end());
      return out;
    });
    // The portable dot against the definition, in double; each instruction set's within float
    // rounding of the terms' magnitude (it sums in another order), and the rest element by element.
    double want_dot = 0, magnitude = 0;
    for (int64_t i = 0; i < n; ++i)
      want_dot += double(a[i]) * b[i], magnitude += std::abs(a[i] * b[i]);
    EXPECT_NEAR(results[0][0], want_dot, 1e-6 * magnitude) << n;
    for (size_t i = 1; i < results.size(); ++i) {
      const std::string where = std::string(isa_name(cpu_isas()[i])) + " n " + std::to_string(n);
      EXPECT_NEAR(results[i][0], results[0][0], 1e-6 * magnitude) << where;
      expect_close(std::vector<float>(results[i].begin() + 1, results[i].end()),
                   std::vector<float>(results[0].begin() + 1, results[0].end()), 1e-6, where);
    }
  }
}

// Head sizes that take the vector kernel (multiples of 8) and the portable loop (12), with masked
// positions and the newest position read from its own row.
TEST(DecodeKernelsOnEveryIsa, AttendMatchesThePortableTwin) {
  for (int64_t hd : {8, 12, 64})
    for (int64_t L : {1, 9, 40}) {
      const auto q = random_floats(hd, 10, 0.3f), keys = random_floats(L * hd, 11),
                 values = random_floats(L * hd, 12), last_key = random_floats(hd, 13),
                 last_value = random_floats(hd, 14);
      std::vector<int64_t> mask(L, 1);
      for (int64_t l = 1; l < L; l += 3) mask[l] = 0;
      const auto results = on_every_isa([&] {
        std::vector<float> scratch(L), out(2 * hd);
        attend(q.data(), keys.data(), values.data(), mask.data(), L, hd, scratch.data(),
               out.data());
        attend(q.data(), keys.data(), values.data(), mask.data(), L, hd, scratch.data(),
               out.data() + hd, last_key.data(), last_value.data());
        return out;
      });
      for (size_t i = 1; i < results.size(); ++i)
        expect_close(results[i], results[0], 1e-5,
                     std::string(isa_name(cpu_isas()[i])) + " hd " + std::to_string(hd) + " L " +
                         std::to_string(L));
    }
}

// Sampled and greedy rows, at temperature 1 and not, with a masked logit: the same tokens as the
// portable twin (the uniforms stay clear of token boundaries at these sizes) and log-probabilities
// within float rounding.
TEST(DecodeKernelsOnEveryIsa, SampleRowsMatchThePortableTwin) {
  const int64_t V = 1003, R = 6;
  auto logits = random_floats(R * V, 15, 3.0f);
  logits[2 * V + 5] = -INFINITY;
  const std::vector<double> u = {0.1, -1.0, 0.5, 0.999, 0.0, 0.73};
  for (float temperature : {1.0f, 0.7f}) {
    const auto results = on_every_isa([&] {
      std::vector<float> scratch(R * V);
      std::vector<RowSample> out(R);
      sample_rows(logits.data(), R, V, temperature, u.data(), scratch.data(), out.data());
      return out;
    });
    for (size_t i = 1; i < results.size(); ++i)
      for (int64_t r = 0; r < R; ++r) {
        EXPECT_EQ(results[i][r].id, results[0][r].id) << isa_name(cpu_isas()[i]) << " row " << r;
        EXPECT_NEAR(results[i][r].logprob, results[0][r].logprob, 1e-5)
            << isa_name(cpu_isas()[i]) << " row " << r;
      }
  }
}

// ---------------------------------------------------------------------------------------------
// The token log-probability rows against their portable twins (and the twins against the
// definitions in double).

struct LogprobCase {
  int64_t N, V;
  std::vector<int64_t> targets;  // -1: ignored
};

LogprobCase logprob_case(int64_t N, int64_t V) {
  LogprobCase c{N, V, {}};
  for (int64_t n = 0; n < N; ++n) c.targets.push_back(n % 4 == 3 ? -1 : (n * 37) % V);
  return c;
}

// lp, lse, ent, then the gradient with the entropy term and without, for rows of type T.
template <typename T>
std::vector<double> logprob_outputs(const LogprobCase& c, const std::vector<T>& z) {
  const int64_t N = c.N, V = c.V;
  std::vector<T> lp(N), lse(N), ent(N), lp2(N), lse2(N), glp(N), gent(N);
  for (int64_t n = 0; n < N; ++n) glp[n] = T(0.5 + 0.1 * n), gent[n] = T(-0.3 + 0.05 * n);
  logprob_rows(z.data(), c.targets.data(), lp.data(), lse.data(), ent.data(), 0, N, V);
  logprob_rows(z.data(), c.targets.data(), lp2.data(), lse2.data(), static_cast<T*>(nullptr), 0, N,
               V);
  std::vector<T> g(N * V), g_plain(z);  // the second in place over a copy of z
  logprob_grad_rows(z.data(), c.targets.data(), lse.data(), ent.data(), glp.data(), gent.data(),
                    g.data(), 0, N, V);
  logprob_grad_rows(g_plain.data(), c.targets.data(), lse.data(), static_cast<const T*>(nullptr),
                    glp.data(), static_cast<const T*>(nullptr), g_plain.data(), 0, N, V);
  std::vector<double> out;
  for (const auto* v : {&lp, &lse, &ent, &lp2, &lse2, &g, &g_plain})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

// The same outputs from the definitions, in double.
std::vector<double> logprob_definition(const LogprobCase& c, const std::vector<double>& z) {
  const int64_t N = c.N, V = c.V;
  std::vector<double> lp(N), lse(N), ent(N), g(N * V), g_plain(N * V);
  for (int64_t n = 0; n < N; ++n) {
    const double* r = &z[n * V];
    const double m = *std::max_element(r, r + V);
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(r[j] - m);
    lse[n] = m + std::log(s);
    const int64_t t = c.targets[n];
    lp[n] = t < 0 ? 0 : r[t] - lse[n];
    for (int64_t j = 0; j < V; ++j) ent[n] -= std::exp(r[j] - lse[n]) * (r[j] - lse[n]);
    const double gl = t < 0 ? 0 : 0.5 + 0.1 * n, gh = -0.3 + 0.05 * n;
    for (int64_t j = 0; j < V; ++j) {
      const double logp = r[j] - lse[n], p = std::exp(logp);
      g[n * V + j] = -p * (gl + gh * (logp + ent[n])) + (j == t ? gl : 0);
      g_plain[n * V + j] = -p * gl + (j == t ? gl : 0);
    }
  }
  std::vector<double> out;
  for (const auto* v : {&lp, &lse, &ent, &lp, &lse, &g, &g_plain})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

void expect_close(const std::vector<double>& a, const std::vector<double>& b, double tol,
                  const std::string& where) {
  ASSERT_EQ(a.size(), b.size()) << where;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(std::abs(a[i] - b[i]), tol * std::max(1.0, std::abs(b[i])))
        << where << " at " << i << ": " << a[i] << " vs " << b[i];
}

TEST(LogprobRowsOnEveryIsa, FloatRowsMatchThePortableTwin) {
  for (int64_t V : {1, 7, 16, 100, 1001}) {
    const LogprobCase c = logprob_case(5, V);
    const auto z = random_floats(c.N * V, 16, 4.0f);
    const auto results = on_every_isa([&] { return logprob_outputs(c, z); });
    const std::vector<double> zd(z.begin(), z.end());
    expect_close(results[0], logprob_definition(c, zd), 1e-5, "portable V " + std::to_string(V));
    for (size_t i = 1; i < results.size(); ++i)
      expect_close(results[i], results[0], 2e-6,
                   std::string(isa_name(cpu_isas()[i])) + " V " + std::to_string(V));
  }
}

// Double rows run the portable loops on every instruction set: the same bits everywhere.
TEST(LogprobRowsOnEveryIsa, DoubleRowsAreThePortableTwinsEverywhere) {
  const LogprobCase c = logprob_case(4, 333);
  const auto zf = random_floats(c.N * c.V, 17, 4.0f);
  const std::vector<double> z(zf.begin(), zf.end());
  const auto results = on_every_isa([&] { return logprob_outputs(c, z); });
  expect_close(results[0], logprob_definition(c, z), 1e-12, "portable");
  for (size_t i = 1; i < results.size(); ++i)
    EXPECT_EQ(results[i], results[0]) << isa_name(cpu_isas()[i]);
}

}  // namespace
}  // namespace rlhf::policy::kernels

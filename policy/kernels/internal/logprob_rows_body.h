// Internal to policy/kernels: the token log-probability row loops (logprob_rows.h), forced inline
// into each instruction set's copy of them (logprob_rows.cpp, logprob_rows_avx2.cpp), which both
// compile them with -fopenmp-simd -fno-trapping-math. Include nowhere else: without -fopenmp-simd
// the `omp simd` pragmas are unknown.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "policy/kernels/internal/isa_target.h"

namespace rlhf::policy::kernels::internal {

#define RLHF_ROW_KERNEL inline __attribute__((always_inline))

// exp(x) in float32 (Cephes expf: reduction by ln 2, a degree-5 polynomial, about 1 ulp), without
// branches or calls so that loops over it vectorise; inputs are clamped to [-87, 88] (exp(-87) =
// 1.6e-38 stands for 0 where it is added to sums >= 1).
RLHF_ROW_KERNEL float exp_lane(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
RLHF_ROW_KERNEL double exp_lane(double x) { return std::exp(x); }

template <typename T>
RLHF_ROW_KERNEL T row_max(const T* r, int64_t V) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = m < r[j] ? r[j] : m;
  return m;
}

// lp[n] = z[n, t] - lse[n] (0 when t < 0); ent[n] = entropy (kEntropy only); rows [begin, end).
template <typename T, bool kEntropy>
RLHF_ROW_KERNEL void logprob_rows_body(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent,
                                       int64_t begin, int64_t end, int64_t V) {
  for (int64_t n = begin; n < end; ++n) {
    const T* r = z + n * V;
    const T m = row_max(r, V);
    T s = 0, w = 0;  // sum exp(z - m), sum exp(z - m) * (z - m)
    if (kEntropy) {
#pragma omp simd reduction(+ : s, w)
      for (int64_t j = 0; j < V; ++j) {
        const T d = r[j] - m, e = exp_lane(d);
        s += e;
        w += e * d;
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < V; ++j) s += exp_lane(r[j] - m);
    }
    const T log_s = std::log(s);
    lse[n] = m + log_s;
    lp[n] = tgt[n] < 0 ? T(0) : (r[tgt[n]] - m) - log_s;  // exact for large equal logits
    if (kEntropy) ent[n] = log_s - w / s;  // -sum p log p with log p = (z - m) - log s
  }
}

// out[n, j] = -p_j * (g_n + gh_n * (log p_j + H_n)) + (j == t ? g_n : 0), p_j = exp(z_j - lse_n):
// the gradient of g * log p_t + gh * H, rows [begin, end). `out` may be `z` itself (each element
// is read before it is written). glp or gent may be null (0).
template <typename T, bool kEntropy>
RLHF_ROW_KERNEL void logprob_grad_rows_body(const T* z, const int64_t* tgt, const T* lse,
                                            const T* ent, const T* glp, const T* gent, T* out,
                                            int64_t begin, int64_t end, int64_t V) {
  for (int64_t n = begin; n < end; ++n) {
    const T* r = z + n * V;
    T* o = out + n * V;
    const T L = lse[n], g = (glp && tgt[n] >= 0) ? glp[n] : T(0);
    const T gh = kEntropy && gent ? gent[n] : T(0), H = kEntropy ? ent[n] : T(0);
    const T target_logit = tgt[n] >= 0 ? r[tgt[n]] : T(0);
    if (kEntropy) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const T d = r[j] - L;
        o[j] = -exp_lane(d) * (g + gh * (d + H));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) o[j] = -exp_lane(r[j] - L) * g;
    }
    if (tgt[n] >= 0) {  // the target's own term, from its logit read before any write
      const T d = target_logit - L;
      o[tgt[n]] = -exp_lane(d) * (kEntropy ? g + gh * (d + H) : g) + g;
    }
  }
}

// The row kernels of one instruction set for element type T (logprob_rows.h): without and with the
// entropy term.
template <typename T>
struct LogprobRowKernels {
  using Rows = void (*)(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent, int64_t begin,
                        int64_t end, int64_t V);
  using GradRows = void (*)(const T* z, const int64_t* tgt, const T* lse, const T* ent,
                            const T* glp, const T* gent, T* out, int64_t begin, int64_t end,
                            int64_t V);
  Rows rows, rows_entropy;
  GradRows grad_rows, grad_rows_entropy;
};

#ifdef RLHF_KERNELS_X86
// The float row kernels compiled for AVX2 + FMA (logprob_rows_avx2.cpp).
const LogprobRowKernels<float>& avx2_logprob_row_kernels();
#endif

}  // namespace rlhf::policy::kernels::internal

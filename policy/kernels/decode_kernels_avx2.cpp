// The decoding kernels for AVX2 + FMA (decode_kernels.h; the dispatch and the portable twins are in
// decode_kernels.cpp). Each function carries its instruction set as an attribute
// (internal/isa_target.h); the file is compiled with the project's ordinary flags.
#include "policy/kernels/internal/decode_kernel_table.h"

#ifdef RLHF_KERNELS_X86

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "policy/kernels/internal/decode_kernels_x86.h"

namespace rlhf::policy::kernels::internal {

namespace {

// AVX2 + FMA kernels: a tile of R activation rows times C weight rows keeps R * C accumulators of 8
// lanes in registers and reads each weight row once per tile; the lanes are summed at the end.

RLHF_TARGET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// AVX2 + FMA: R rows times half a panel (16 columns: 2 vectors), R * 2 accumulators in registers;
// each k broadcasts x[r, k] and multiplies it into the panel's row k.
// With kPrefetch it also fetches the next panel (as panel_tile_avx512 does).
template <int R, bool kPrefetch = false>
RLHF_TARGET_AVX2 void half_panel_avx2(const float* x, int64_t ldx, const float* wp, int64_t K,
                                      int64_t cols, float* out, int64_t ldo, bool accumulate) {
  __m256 a0[R], a1[R];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (kPrefetch) {
      const char* next = reinterpret_cast<const char*>(wp + (K + k) * kPanel);
      _mm_prefetch(next, _MM_HINT_NTA);
      _mm_prefetch(next + 64, _MM_HINT_NTA);
    }
    const __m256 w0 = _mm256_loadu_ps(wp + k * kPanel), w1 = _mm256_loadu_ps(wp + k * kPanel + 8);
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      a0[r] = _mm256_fmadd_ps(xv, w0, a0[r]);
      a1[r] = _mm256_fmadd_ps(xv, w1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    if (cols >= 16) {
      __m256 s0 = a0[r], s1 = a1[r];
      if (accumulate) {
        s0 = _mm256_add_ps(_mm256_loadu_ps(o), s0);
        s1 = _mm256_add_ps(_mm256_loadu_ps(o + 8), s1);
      }
      _mm256_storeu_ps(o, s0);
      _mm256_storeu_ps(o + 8, s1);
    } else {
      alignas(32) float sums[16];
      _mm256_store_ps(sums, a0[r]);
      _mm256_store_ps(sums + 8, a1[r]);
      store_row(sums, cols, accumulate, o);
    }
  }
}

// One AVX2 tile of n = 1..6 rows times half a panel.
template <bool kPrefetch>
RLHF_TARGET_AVX2 void tile_avx2(int64_t n, const float* x, int64_t ldx, const float* wp, int64_t K,
                                int64_t cols, float* out, int64_t ldo, bool acc) {
  with_rows<6>(n, [&](auto rows) {
    half_panel_avx2<decltype(rows)::value, kPrefetch>(x, ldx, wp, K, cols, out, ldo, acc);
  });
}

// All `rows` rows of one panel, 6 rows per tile (12 accumulators, 2 weight vectors and a broadcast
// fit AVX2's 16 registers). From kPrefetchRows rows, the first tile fetches the next panel.
RLHF_TARGET_AVX2 void panel_avx2(const float* x, int64_t rows, int64_t ldx, const float* wp,
                                 int64_t K, int64_t cols, float* out, int64_t ldo, bool acc) {
  for (int64_t half = 0; half < 2 && half * 16 < cols; ++half) {
    const float* w = wp + half * 16;
    float* o = out + half * 16;
    const int64_t c = std::min<int64_t>(16, cols - half * 16);
    for (int64_t b = 0; b < rows; b += 6) {
      const int64_t n = std::min<int64_t>(6, rows - b);
      if (half == 0 && b == 0 && rows >= kPrefetchRows)
        tile_avx2<true>(n, x, ldx, w, K, c, o, ldo, acc);
      else
        tile_avx2<false>(n, x + b * ldx, ldx, w, K, c, o + b * ldo, ldo, acc);
    }
  }
}

RLHF_TARGET_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Sums each of 8 vectors: lane i of the result = the sum of the lanes of a[i].
RLHF_TARGET_AVX2 inline __m256 hsum8(const __m256* a) {
  const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

RLHF_TARGET_AVX2 float max_avx2(const float* x, int64_t n);
RLHF_TARGET_AVX2 float exp_and_sum_avx2(float* y, int64_t n, float max);

// attend() for hd a multiple of 8: scores of 8 keys at a time, then the weighted sum of values with
// 32 output lanes at a time in registers.
RLHF_TARGET_AVX2 void attend_avx2(const float* q, const float* keys, const float* values,
                                  const int64_t* mask, int64_t L, int64_t hd, float* scores,
                                  float* out, const float* last_key, const float* last_value) {
  const int64_t Lc = last_key ? L - 1 : L;  // positions read from the cache
  int64_t l = 0;
  for (; l + 8 <= Lc; l += 8) {
    // The cache streams from memory: fetch the keys two blocks ahead and this block's values (read
    // after the softmax) while the multiplies run.
    const char* ahead = reinterpret_cast<const char*>(keys + (l + 16) * hd);
    const char* vals = reinterpret_cast<const char*>(values + l * hd);
    for (int64_t byte = 0; byte < 8 * hd * 4; byte += 64) {
      if (l + 16 < Lc) _mm_prefetch(ahead + byte, _MM_HINT_T0);
      _mm_prefetch(vals + byte, _MM_HINT_T0);
    }
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] =
          _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + (l + j) * hd + i), acc[j]);
    }
    _mm256_storeu_ps(scores + l, hsum8(acc));
  }
  for (; l < Lc; ++l) scores[l] = dot_avx2(q, keys + l * hd, hd);
  if (last_key) scores[L - 1] = dot_avx2(q, last_key, hd);
  for (l = 0; l < L; ++l)
    if (!mask[l]) scores[l] = -INFINITY;  // weight 0 below
  const float inv_total = 1.0f / exp_and_sum_avx2(scores, L, max_avx2(scores, L));
  for (int64_t i0 = 0; i0 < hd; i0 += 32) {
    const int n = int(std::min<int64_t>(32, hd - i0)) / 8;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (l = 0; l < L; ++l) {
      if (scores[l] == 0.0f) continue;
      const __m256 p = _mm256_set1_ps(scores[l] * inv_total);
      const float* v = (l < Lc ? values + l * hd : last_value) + i0;
      for (int j = 0; j < n; ++j) acc[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    for (int j = 0; j < n; ++j) _mm256_storeu_ps(out + i0 + 8 * j, acc[j]);
  }
}

// attend_avx2 for G <= kMaxGroup query heads q [G, hd] of one kv head (attend_group): every head
// gets attend_avx2's bits. group_scores_avx2 (below) computes the softmax weights; then each value
// row is read once for two heads at a time, each head's own chain of multiply-adds in l order.
RLHF_TARGET_AVX2 void attend_group_avx2(const float* q, int64_t G, const float* keys,
                                        const float* values, const int64_t* mask, int64_t L,
                                        int64_t hd, float* scores, float* out,
                                        const float* last_key, const float* last_value) {
  float inv_total[kMaxGroup];
  group_scores_avx2(q, G, keys, values, mask, L, hd, scores, last_key, inv_total);
  const int64_t Lc = last_key ? L - 1 : L;
  for (int64_t g0 = 0; g0 < G; g0 += 2) {
    const int heads = int(std::min<int64_t>(2, G - g0));
    for (int64_t i0 = 0; i0 < hd; i0 += 32) {
      const int n = int(std::min<int64_t>(32, hd - i0)) / 8;
      __m256 acc[2][4];
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j) acc[h][j] = _mm256_setzero_ps();
      for (int64_t l = 0; l < L; ++l) {
        const float* v = (l < Lc ? values + l * hd : last_value) + i0;
        for (int h = 0; h < heads; ++h) {
          const float s = scores[(g0 + h) * L + l];
          if (s == 0.0f) continue;
          const __m256 p = _mm256_set1_ps(s * inv_total[g0 + h]);
          for (int j = 0; j < n; ++j)
            acc[h][j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * j), acc[h][j]);
        }
      }
      for (int h = 0; h < heads; ++h)
        for (int j = 0; j < n; ++j) _mm256_storeu_ps(out + (g0 + h) * hd + i0 + 8 * j, acc[h][j]);
    }
  }
}

// sum_i x_i^2 in double (each square exact), 4 lanes and then their sum: the same float norm as
// the sequential sum but where the two sums round differently in double, about once in 1e8 rows.
RLHF_TARGET_AVX2 double sum_of_squares_avx2(const float* x, int64_t n) {
  __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
    const __m256d hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a = _mm256_fmadd_pd(lo, lo, a);
    b = _mm256_fmadd_pd(hi, hi, b);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a, b));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

RLHF_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpMin)), _mm256_set1_ps(kExpMax));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r =
      _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x));
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

RLHF_TARGET_AVX2 void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sig =
        _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = (gate[i] * (1.0f / (1.0f + std::exp(-gate[i])))) * up[i];
}

// x_j / temperature into scratch; returns its maximum.
RLHF_TARGET_AVX2 float scale_and_max_avx2(const float* x, int64_t n, float temperature, float* y) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  const __m256 t = _mm256_set1_ps(temperature);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + i), t);
    _mm256_storeu_ps(y + i, v);
    m = _mm256_max_ps(m, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float best = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) best = std::max(best, y[i] = x[i] / temperature);
  return best;
}

// The largest of x[0..n), n >= 1.
RLHF_TARGET_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float best = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

}  // namespace

// y_j = exp(x_j - max) (exactly 0 for x_j = -inf; x may be y) from index i on, the blocks of 8
// added into the lanes of acc in order; returns the sum of the lanes, then the tail's.
RLHF_TARGET_AVX2 float exp_and_sum_from(const float* x, float* y, int64_t n, float max, __m256 acc,
                                        int64_t i) {
  const __m256 m = _mm256_set1_ps(max), minus_inf = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e =
        _mm256_andnot_ps(_mm256_cmp_ps(v, minus_inf, _CMP_EQ_OQ), exp_avx2(_mm256_sub_ps(v, m)));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float s = hsum(acc);
  for (; i < n; ++i) s += y[i] = std::exp(x[i] - max);
  return s;
}

namespace {

// y_j = exp(x_j - max) for all n (x may be y); returns the sum.
RLHF_TARGET_AVX2 float exp_and_sum_avx2(const float* x, float* y, int64_t n, float max) {
  return exp_and_sum_from(x, y, n, max, _mm256_setzero_ps(), 0);
}
RLHF_TARGET_AVX2 float exp_and_sum_avx2(float* y, int64_t n, float max) {
  return exp_and_sum_avx2(y, y, n, max);
}

// The start of the first block of 8 of x[0..n) that holds `value` (n - n % 8 when none does).
RLHF_TARGET_AVX2 int64_t first_equal_avx2(const float* x, int64_t n, float value) {
  const __m256 v = _mm256_set1_ps(value);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), v, _CMP_EQ_OQ))) break;
  return i;
}

// The running sums of the 4 rows from index j to end into c (in double, one lane per row, in index
// order); 4 indices at a time as a 4 x 4 transpose.

RLHF_TARGET_AVX2 void add_block_avx2(const float* const e[kSampleLanes], int64_t j, int64_t end,
                                     double c[kSampleLanes]) {
  __m256d acc = _mm256_loadu_pd(c);
  int64_t k = j;
  for (; k + 4 <= end; k += 4) {
    __m128 r0 = _mm_loadu_ps(e[0] + k), r1 = _mm_loadu_ps(e[1] + k), r2 = _mm_loadu_ps(e[2] + k),
           r3 = _mm_loadu_ps(e[3] + k);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);  // r0 = index k of the 4 rows, r1 = index k + 1, ...
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(r0));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(r1));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(r2));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(r3));
  }
  for (; k < end; ++k)
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm_setr_ps(e[0][k], e[1][k], e[2][k], e[3][k])));
  _mm256_storeu_pd(c, acc);
}

}  // namespace

// The softmax weights of attend_group's G <= kMaxGroup heads, as attend_avx2 computes them for
// each head: scores[g L + l] = exp(q_g . k_l - max) (0 where masked), inv_total[g] = 1 / their
// sum. The scores of each block of 8 keys are computed for every head while the block is in L1.
RLHF_TARGET_AVX2 void group_scores_avx2(const float* q, int64_t G, const float* keys,
                                        const float* values, const int64_t* mask, int64_t L,
                                        int64_t hd, float* scores, const float* last_key,
                                        float* inv_total) {
  const int64_t Lc = last_key ? L - 1 : L;  // positions read from the cache
  int64_t l = 0;
  for (; l + 8 <= Lc; l += 8) {
    const char* ahead = reinterpret_cast<const char*>(keys + (l + 16) * hd);
    const char* vals = reinterpret_cast<const char*>(values + l * hd);
    for (int64_t byte = 0; byte < 8 * hd * 4; byte += 64) {
      if (l + 16 < Lc) _mm_prefetch(ahead + byte, _MM_HINT_T0);
      _mm_prefetch(vals + byte, _MM_HINT_T0);
    }
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * hd;
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + i);
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] =
            _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + (l + j) * hd + i), acc[j]);
      }
      _mm256_storeu_ps(scores + g * L + l, hsum8(acc));
    }
  }
  group_scores_from_avx2(q, G, keys, mask, L, hd, scores, last_key, l, inv_total);
}

RLHF_TARGET_AVX2 void group_scores_from_avx2(const float* q, int64_t G, const float* keys,
                                             const int64_t* mask, int64_t L, int64_t hd,
                                             float* scores, const float* last_key, int64_t l,
                                             float* inv_total) {
  const int64_t Lc = last_key ? L - 1 : L;
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * hd;
    float* s = scores + g * L;
    for (int64_t m = l; m < Lc; ++m) s[m] = dot_avx2(qg, keys + m * hd, hd);
    if (last_key) s[L - 1] = dot_avx2(qg, last_key, hd);
    for (int64_t m = 0; m < L; ++m)
      if (!mask[m]) s[m] = -INFINITY;  // weight 0 below
    inv_total[g] = 1.0f / exp_and_sum_avx2(s, L, max_avx2(s, L));
  }
}

const DecodeKernelTable& avx2_decode_kernels() {
  static constexpr DecodeKernelTable kTable = {
      panel_avx2,        dot_avx2,         sum_of_squares_avx2, attend_avx2,
      attend_group_avx2, swiglu_avx2,      scale_and_max_avx2,  max_avx2,
      first_equal_avx2,  exp_and_sum_avx2, add_block_avx2};
  return kTable;
}

}  // namespace rlhf::policy::kernels::internal

#endif  // RLHF_KERNELS_X86

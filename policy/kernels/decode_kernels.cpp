#include "policy/kernels/decode_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RLHF_HAVE_AVX2_KERNEL 1
#define RLHF_AVX2 __attribute__((target("avx2,fma")))
#define RLHF_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace rlhf::policy::kernels {

namespace {

// ---------------------------------------------------------------------------------------------
// Portable kernels.

float dot_portable(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

constexpr int64_t kPanel = PackedWeight::kPanel;

// Calls fn(std::integral_constant<int, n>) for a run-time n in 1..kMax (the tiles' row count is
// a template parameter, so their accumulators stay in registers).
template <int kMax, typename Fn>
void with_rows(int64_t n, Fn&& fn) {
  if constexpr (kMax == 1) {
    fn(std::integral_constant<int, 1>{});
  } else {
    if (n == kMax) return fn(std::integral_constant<int, kMax>{});
    with_rows<kMax - 1>(n, fn);
  }
}

// Stores a tile's row of kPanel sums into the first `cols` columns of o (adding when accumulating).
inline void store_row(const float* sums, int64_t cols, bool accumulate, float* o) {
  for (int64_t c = 0; c < cols; ++c) o[c] = accumulate ? o[c] + sums[c] : sums[c];
}

// One panel for `rows` rows, as fused multiply-add chains in k order (the tiles' order).
void panel_portable(const float* x, int64_t rows, int64_t ldx, const float* wp, int64_t K,
                    int64_t cols, float* out, int64_t ldo, bool accumulate) {
  float sums[kPanel];
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(sums, sums + kPanel, 0.0f);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < kPanel; ++c)
        sums[c] = std::fma(x[r * ldx + k], wp[k * kPanel + c], sums[c]);
    store_row(sums, cols, accumulate, out + r * ldo);
  }
}

#ifdef RLHF_HAVE_AVX2_KERNEL
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA kernels: a tile of R activation rows times C weight rows keeps R * C accumulators of 8
// lanes in registers and reads each weight row once per tile; the lanes are summed at the end.

RLHF_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// AVX2 + FMA: R rows times half a panel (16 columns: 2 vectors), R * 2 accumulators in registers;
// each k broadcasts x[r, k] and multiplies it into the panel's row k.
// With kPrefetch it also fetches the next panel (as panel_tile_avx512 does).
template <int R, bool kPrefetch = false>
RLHF_AVX2 void half_panel_avx2(const float* x, int64_t ldx, const float* wp, int64_t K,
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

// Row counts from which the first pass over a panel fetches the next one. Measured on the 2-core
// VM (AVX-512): batch 32 decodes 8-10% faster with it; batch 1, which streams each panel once
// (the hardware prefetcher already follows it), 8% slower.
constexpr int64_t kPrefetchRows = 8;

// One AVX2 tile of n = 1..6 rows times half a panel.
template <bool kPrefetch>
RLHF_AVX2 void tile_avx2(int64_t n, const float* x, int64_t ldx, const float* wp, int64_t K,
                         int64_t cols, float* out, int64_t ldo, bool acc) {
  with_rows<6>(n, [&](auto rows) {
    half_panel_avx2<decltype(rows)::value, kPrefetch>(x, ldx, wp, K, cols, out, ldo, acc);
  });
}

// All `rows` rows of one panel, 6 rows per tile (12 accumulators, 2 weight vectors and a broadcast
// fit AVX2's 16 registers). From kPrefetchRows rows, the first tile fetches the next panel.
RLHF_AVX2 void panel_avx2(const float* x, int64_t rows, int64_t ldx, const float* wp, int64_t K,
                          int64_t cols, float* out, int64_t ldo, bool acc) {
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

// AVX-512: R rows times a whole panel (2 vectors of 16), R * 2 accumulators.
// With kPrefetch, the tile also asks for the next panel in memory (wp + K kPanel: the next panel of
// this weight, or the first of the next packed weight), a row of it per k, so the first pass over
// that panel does not wait on memory. The non-temporal hint measured 2-3% faster than the L2 one
// at batch 32 (weights are read once per step; the KV cache, read next, stays cached).
template <int R, bool kPrefetch = false>
RLHF_AVX512 void panel_tile_avx512(const float* x, int64_t ldx, const float* wp, int64_t K,
                                   int64_t cols, float* out, int64_t ldo, bool accumulate) {
  __m512 a0[R], a1[R];
  _Pragma("GCC unroll 16") for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (kPrefetch) {
      const char* next = reinterpret_cast<const char*>(wp + (K + k) * kPanel);
      _mm_prefetch(next, _MM_HINT_NTA);
      _mm_prefetch(next + 64, _MM_HINT_NTA);
    }
    const __m512 w0 = _mm512_loadu_ps(wp + k * kPanel), w1 = _mm512_loadu_ps(wp + k * kPanel + 16);
    _Pragma("GCC unroll 16") for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
      a0[r] = _mm512_fmadd_ps(xv, w0, a0[r]);
      a1[r] = _mm512_fmadd_ps(xv, w1, a1[r]);
    }
  }
  // Masks of the columns to store: all 32 except in a zero-padded last panel.
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32
                           ? __mmask16(0xFFFF)
                           : (cols <= 16 ? __mmask16(0) : __mmask16((1u << (cols - 16)) - 1));
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    __m512 s0 = a0[r], s1 = a1[r];
    if (accumulate) {
      s0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), s0);
      s1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), s1);
    }
    _mm512_mask_storeu_ps(o, m0, s0);
    _mm512_mask_storeu_ps(o + 16, m1, s1);
  }
}

// One AVX-512 tile of n = 1..12 rows.
template <bool kPrefetch>
RLHF_AVX512 void tile_avx512(int64_t n, const float* x, int64_t ldx, const float* wp, int64_t K,
                             int64_t cols, float* out, int64_t ldo, bool acc) {
  with_rows<12>(n, [&](auto rows) {
    panel_tile_avx512<decltype(rows)::value, kPrefetch>(x, ldx, wp, K, cols, out, ldo, acc);
  });
}

// All `rows` rows of one panel, 12 rows per tile (24 accumulators, 2 weight vectors and a
// broadcast of AVX-512's 32 registers). From kPrefetchRows rows, the first pass over the panel (the
// one that reads it from memory) also fetches the next panel.
RLHF_AVX512 void panel_avx512(const float* x, int64_t rows, int64_t ldx, const float* wp, int64_t K,
                              int64_t cols, float* out, int64_t ldo, bool acc) {
  for (int64_t b = 0; b < rows; b += 12) {
    const int64_t n = std::min<int64_t>(12, rows - b);
    if (b == 0 && rows >= kPrefetchRows)
      tile_avx512<true>(n, x, ldx, wp, K, cols, out, ldo, acc);
    else
      tile_avx512<false>(n, x + b * ldx, ldx, wp, K, cols, out + b * ldo, ldo, acc);
  }
}

RLHF_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Sums each of 8 vectors: lane i of the result = the sum of the lanes of a[i].
RLHF_AVX2 inline __m256 hsum8(const __m256* a) {
  const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

RLHF_AVX2 float max_avx2(const float* x, int64_t n);
RLHF_AVX2 float exp_and_sum_avx2(float* y, int64_t n, float max);

// attend() for hd a multiple of 8: scores of 8 keys at a time, then the weighted sum of values with
// 32 output lanes at a time in registers.
RLHF_AVX2 void attend_avx2(const float* q, const float* keys, const float* values,
                           const int64_t* mask, int64_t L, int64_t hd, float* scores, float* out,
                           const float* last_key, const float* last_value) {
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

// sum_i x_i^2 in double (each square exact), 4 lanes and then their sum: the same float norm as
// the sequential sum but where the two sums round differently in double, about once in 1e8 rows.
RLHF_AVX2 double sum_of_squares_avx2(const float* x, int64_t n) {
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

// exp(x) = 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for precision)
// and p the Cephes degree-7 polynomial; relative error about 1e-7 over [-87, 88]. The constants of
// the 8-lane (AVX2) and 16-lane (AVX-512) versions, which do the same operations lane by lane.
constexpr float kExpMin = -87.3f, kExpMax = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                              4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

RLHF_AVX2 inline __m256 exp_avx2(__m256 x) {
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

RLHF_AVX2 void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n) {
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
RLHF_AVX2 float scale_and_max_avx2(const float* x, int64_t n, float temperature, float* y) {
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
RLHF_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float best = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

// y_j = exp(x_j - max) (exactly 0 for x_j = -inf; x may be y) from index i on, the blocks of 8
// added into the lanes of acc in order; returns the sum of the lanes, then the tail's.
RLHF_AVX2 float exp_and_sum_from(const float* x, float* y, int64_t n, float max, __m256 acc,
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
// y_j = exp(x_j - max) for all n (x may be y); returns the sum.
RLHF_AVX2 float exp_and_sum_avx2(const float* x, float* y, int64_t n, float max) {
  return exp_and_sum_from(x, y, n, max, _mm256_setzero_ps(), 0);
}
RLHF_AVX2 float exp_and_sum_avx2(float* y, int64_t n, float max) {
  return exp_and_sum_avx2(y, y, n, max);
}

// exp_avx2 in 16 lanes: the same operations, so the same bits in every lane. (GCC 12 warns about
// the "undefined" pass-through operand inside unmasked AVX-512 intrinsics, a known false positive;
// off for this and the next function.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
RLHF_AVX512 inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpMin)), _mm512_set1_ps(kExpMax));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r =
      _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x));
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// exp_and_sum_avx2 with the exponentials 16 at a time: the same values and, added 8 lanes at a
// time in the same order, the same sum.
RLHF_AVX512 float exp_and_sum_avx512(const float* x, float* y, int64_t n, float max) {
  const __m512 m = _mm512_set1_ps(max), minus_inf = _mm512_set1_ps(-INFINITY);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 finite = _mm512_cmp_ps_mask(v, minus_inf, _CMP_NEQ_UQ);
    const __m512 e = _mm512_maskz_mov_ps(finite, exp_avx512(_mm512_sub_ps(v, m)));
    _mm512_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
    acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  }
  return exp_and_sum_from(x, y, n, max, acc, i);
}
#pragma GCC diagnostic pop
#endif

Isa detect_isa() {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

// What the CPU supports, capped by RLHF_DECODE_ISA.
// What the CPU supports, capped by RLHF_DECODE_ISA (an unknown value is reported on stderr once
// and ignored).
Isa initial_isa() {
  const Isa isa = detect_isa();
  const char* env = std::getenv("RLHF_DECODE_ISA");
  if (!env || !*env) return isa;
  const std::string want = env;
  if (want == "portable") return Isa::kPortable;
  if (want == "avx2") return std::min(isa, Isa::kAvx2);
  if (want == "avx512") return isa;
  std::fprintf(stderr,
               "warning: RLHF_DECODE_ISA='%s' is not one of portable, avx2, avx512; using %s\n",
               env, isa == Isa::kAvx512 ? "avx512" : (isa == Isa::kAvx2 ? "avx2" : "portable"));
  return isa;
}

const Isa kBestIsa = initial_isa();
std::atomic<Isa> g_isa{kBestIsa};

bool use_avx2() { return g_isa.load(std::memory_order_relaxed) != Isa::kPortable; }

// Panels per chunk of matmul_nt: enough work per hand-off, enough chunks to share.
int64_t panels_per_chunk(int64_t B) { return B >= 8 ? 1 : (B >= 2 ? 2 : 4); }

}  // namespace

Isa best_isa() { return kBestIsa; }

Isa active_isa() { return g_isa.load(); }

Isa set_isa(Isa isa) {
  const Isa capped = std::min(isa, detect_isa());
  return g_isa.exchange(capped);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

namespace {

// Panel p of the stacked parts into dst (kPanel * K floats): row by row of the panel, zeros past
// the last row.
// The source row of panel p's column c (nullptr: a zero column past the end).
const float* source_row(const std::vector<const float*>& parts, const std::vector<int64_t>& rows,
                        int64_t K, PackedWeight::Layout layout, int64_t p, int64_t c) {
  if (layout == PackedWeight::Layout::kPairs) {
    const int64_t half = kPanel / 2, j = p * half + c % half;
    return j < rows[0] ? parts[c / half] + j * K : nullptr;
  }
  int64_t j = p * kPanel + c;
  for (size_t part = 0; part < parts.size(); j -= rows[part++])
    if (j < rows[part]) return parts[part] + j * K;
  return nullptr;
}

void pack_panel(const std::vector<const float*>& parts, const std::vector<int64_t>& rows, int64_t K,
                PackedWeight::Layout layout, int64_t p, float* dst) {
  for (int64_t c = 0; c < kPanel; ++c) {
    const float* src = source_row(parts, rows, K, layout, p, c);
    for (int64_t k = 0; k < K; ++k) dst[k * kPanel + c] = src ? src[k] : 0.0f;
  }
}

}  // namespace

PackedWeight::PackedWeight(const float* w, int64_t n, int64_t K)
    : n_(n), K_(K), owned_(floats(n, K)), data_(owned_.data()) {
  for (int64_t p = 0; p < panels(); ++p)
    pack_panel({w}, {n}, K, layout_, p, data_ + p * K * kPanel);
}

PackedWeight::PackedWeight(const std::vector<const float*>& parts, const std::vector<int64_t>& rows,
                           int64_t K, float* storage, LoopPool& pool, Layout layout)
    : K_(K), layout_(layout), data_(storage) {
  if (layout == Layout::kPairs) {
    if (parts.size() != 2 || rows.size() != 2 || rows[0] != rows[1])
      throw Error("PackedWeight: the pairs layout takes two parts of equal rows");
    n_ = rows[0];
  } else {
    for (int64_t r : rows) n_ += r;
  }
  pool.parallel_for(
      panels(), [&](int64_t p) { pack_panel(parts, rows, K, layout, p, data_ + p * K * kPanel); });
}

float dot(const float* a, const float* b, int64_t n) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (use_avx2()) return dot_avx2(a, b, n);
#endif
  return dot_portable(a, b, n);
}

namespace {

// One panel for all B rows on the instruction set `isa`.
void run_panel(Isa isa, const float* x, int64_t B, int64_t ldx, const float* wp, int64_t K,
               int64_t cols, float* out, int64_t ldo, bool accumulate) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (isa == Isa::kAvx512) return panel_avx512(x, B, ldx, wp, K, cols, out, ldo, accumulate);
  if (isa == Isa::kAvx2) return panel_avx2(x, B, ldx, wp, K, cols, out, ldo, accumulate);
#endif
  panel_portable(x, B, ldx, wp, K, cols, out, ldo, accumulate);
}

}  // namespace

void matmul_nt(const float* x, int64_t B, int64_t K, int64_t ldx,
               const std::vector<MatmulJob>& jobs, LoopPool& pool) {
  const int64_t per_chunk = panels_per_chunk(B);
  std::vector<int64_t> first_chunk(jobs.size() + 1, 0);  // chunk index where each job starts
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (jobs[i].w->K() != K)
      throw Error("matmul_nt: job " + std::to_string(i) + " has a weight of inner size " +
                  std::to_string(jobs[i].w->K()) + ", expected " + std::to_string(K));
    const bool pairs = jobs[i].w->layout() == PackedWeight::Layout::kPairs;
    const bool swiglu = jobs[i].epilogue == MatmulJob::Epilogue::kSwiGlu;
    if (pairs != swiglu || (swiglu && jobs[i].accumulate))
      throw Error("matmul_nt: job " + std::to_string(i) +
                  ": the SwiGLU epilogue takes a pairs-layout weight and no accumulate, and a "
                  "pairs-layout weight needs it");
    first_chunk[i + 1] = first_chunk[i] + (jobs[i].w->panels() + per_chunk - 1) / per_chunk;
  }
  const Isa isa = g_isa.load(std::memory_order_relaxed);
  pool.parallel_for(first_chunk.back(), [&](int64_t chunk) {
    const size_t i =
        std::upper_bound(first_chunk.begin(), first_chunk.end(), chunk) - first_chunk.begin() - 1;
    const MatmulJob& job = jobs[i];
    const int64_t p0 = (chunk - first_chunk[i]) * per_chunk;
    const int64_t p1 = std::min(job.w->panels(), p0 + per_chunk);
    const bool swiglu = job.epilogue == MatmulJob::Epilogue::kSwiGlu;
    thread_local std::vector<float> sums;  // [B, kPanel] gate | up sums for the epilogue
    if (swiglu) sums.resize(B * kPanel);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t per = job.w->outputs_per_panel(), first = p * per;
      const int64_t outputs = std::min(per, job.w->n() - first);
      const int64_t cols = swiglu ? kPanel : outputs;
      float* out = swiglu ? sums.data() : job.out + first;
      const int64_t ldo = swiglu ? kPanel : job.ldo;
      run_panel(isa, x, B, ldx, job.w->panel(p), K, cols, out, ldo, job.accumulate);
      if (swiglu)
        for (int64_t b = 0; b < B; ++b) {
          const float* row = sums.data() + b * kPanel;
          kernels::swiglu(row, row + kPanel / 2, job.out + b * job.ldo + first, outputs);
        }
    }
  });
}

void rms_norm_rows(const float* x, const float* w, float* y, int64_t B, int64_t D, double eps) {
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = x + b * D;
    float* yr = y + b * D;
    double ss = 0;
#ifdef RLHF_HAVE_AVX2_KERNEL
    if (use_avx2()) {
      ss = sum_of_squares_avx2(xr, D);
    } else
#endif
    {
      for (int64_t j = 0; j < D; ++j) ss += double(xr[j]) * double(xr[j]);
    }
    const float r = float(1.0 / std::sqrt(ss / double(D) + eps));
    for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] * r) * w[j];
  }
}

void rope_heads(float* x, const float* cos, const float* sin, int64_t heads, int64_t hd,
                float scale) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = (x1 * cos[i] - x2 * sin[i]) * scale;
      v[i + half] = (x2 * cos[i] + x1 * sin[i]) * scale;
    }
  }
}

void attend(const float* q, const float* keys, const float* values, const int64_t* mask, int64_t L,
            int64_t hd, float* scratch, float* out, const float* last_key,
            const float* last_value) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (use_avx2() && hd % 8 == 0)
    return attend_avx2(q, keys, values, mask, L, hd, scratch, out, last_key, last_value);
#endif
  const int64_t Lc = last_key ? L - 1 : L;  // positions read from the cache
  auto key = [&](int64_t l) { return l < Lc ? keys + l * hd : last_key; };
  auto value = [&](int64_t l) { return l < Lc ? values + l * hd : last_value; };
  float max_score = -INFINITY;
  for (int64_t l = 0; l < L; ++l)
    if (mask[l]) max_score = std::max(max_score, scratch[l] = dot(q, key(l), hd));
  float total = 0;
  for (int64_t l = 0; l < L; ++l)
    if (mask[l]) total += scratch[l] = std::exp(scratch[l] - max_score);
  std::fill(out, out + hd, 0.0f);
  for (int64_t l = 0; l < L; ++l) {
    if (!mask[l]) continue;
    const float p = scratch[l] / total;
    const float* v = value(l);
    for (int64_t i = 0; i < hd; ++i) out[i] += p * v[i];
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (use_avx2()) return swiglu_avx2(gate, up, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g * (1.0f / (1.0f + std::exp(-g)))) * up[i];
  }
}

namespace {

// The softmax of one row up to its normalisation: scratch = e = exp(x - max) for x = logits /
// temperature (temperature 1: the logits themselves, no division), max, sum(e), and the first
// largest x when `argmax` is wanted.
struct RowExp {
  float max, total;
  int64_t argmax;
};
#ifdef RLHF_HAVE_AVX2_KERNEL
// The start of the first block of 8 of x[0..n) that holds `value` (n - n % 8 when none does).
RLHF_AVX2 int64_t first_equal_avx2(const float* x, int64_t n, float value) {
  const __m256 v = _mm256_set1_ps(value);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), v, _CMP_EQ_OQ))) break;
  return i;
}
#endif

RowExp exp_row(const float* logits, int64_t V, float temperature, bool argmax, float* scratch) {
  const Isa isa = g_isa.load(std::memory_order_relaxed);
  RowExp r{-INFINITY, 0.0f, 0};
  const float* x = logits;
  if (temperature != 1.0f) {
    x = scratch;
#ifdef RLHF_HAVE_AVX2_KERNEL
    if (isa != Isa::kPortable) {
      r.max = scale_and_max_avx2(logits, V, temperature, scratch);
    } else
#endif
    {
      for (int64_t j = 0; j < V; ++j) r.max = std::max(r.max, scratch[j] = logits[j] / temperature);
    }
  } else {
#ifdef RLHF_HAVE_AVX2_KERNEL
    if (isa != Isa::kPortable) {
      r.max = max_avx2(logits, V);
    } else
#endif
    {
      for (int64_t j = 0; j < V; ++j) r.max = std::max(r.max, logits[j]);
    }
  }
  if (argmax) {
#ifdef RLHF_HAVE_AVX2_KERNEL
    if (isa != Isa::kPortable) r.argmax = first_equal_avx2(x, V, r.max);
#endif
    while (r.argmax + 1 < V && x[r.argmax] != r.max) ++r.argmax;
  }
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (isa == Isa::kAvx512) {
    r.total = exp_and_sum_avx512(x, scratch, V, r.max);
  } else if (isa == Isa::kAvx2) {
    r.total = exp_and_sum_avx2(x, scratch, V, r.max);
  } else
#endif
  {
    for (int64_t j = 0; j < V; ++j) r.total += scratch[j] = std::exp(x[j] - r.max);
  }
  return r;
}

constexpr int64_t kCdfBlock = 16;  // indices between checks of the running sums

// The running sums of the 4 rows from index j to end into c (in double, one lane per row, in index
// order); 4 indices at a time as a 4 x 4 transpose.
#ifdef RLHF_HAVE_AVX2_KERNEL
RLHF_AVX2 void add_block_avx2(const float* const e[kSampleLanes], int64_t j, int64_t end,
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
#endif

void add_block(const float* const e[kSampleLanes], int64_t j, int64_t end, double c[kSampleLanes]) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (use_avx2()) return add_block_avx2(e, j, end, c);
#endif
  for (int64_t k = j; k < end; ++k)
    for (int64_t i = 0; i < kSampleLanes; ++i) c[i] += double(e[i][k]);
}

// For each row i whose bit is set in `open`: id[i] = the first index j whose running sum of
// e[i][0..j] (in double, in index order, as one sequential chain) exceeds target[i]; rows that
// never exceed it keep their id. The kSampleLanes chains run side by side, branch-free over blocks
// of 16 indices; a row whose sum crossed its target inside a block redoes that block alone from
// the block's starting sum (the same additions, so the same sums) to find the index.
void inverse_cdf(const float* const e[kSampleLanes], const double target[kSampleLanes], int64_t V,
                 int open, int64_t id[kSampleLanes]) {
  static_assert(kSampleLanes == 4, "add_block adds four chains");
  double now[kSampleLanes] = {0, 0, 0, 0};
  for (int64_t j = 0; open && j < V; j += kCdfBlock) {
    const int64_t end = std::min(V, j + kCdfBlock);
    const double start[kSampleLanes] = {now[0], now[1], now[2], now[3]};
    add_block(e, j, end, now);
    for (int64_t i = 0; i < kSampleLanes; ++i) {
      if (!(open >> i & 1) || !(now[i] > target[i])) continue;
      double cdf = start[i];
      int64_t k = j;
      while ((cdf += double(e[i][k])) <= target[i]) ++k;
      id[i] = k;
      open &= ~(1 << i);
    }
  }
}

}  // namespace

void sample_rows(const float* logits, int64_t rows, int64_t V, float temperature, const double* u,
                 float* scratch, RowSample* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += kSampleLanes) {
    const int64_t n = std::min<int64_t>(kSampleLanes, rows - r0);
    RowExp e[kSampleLanes];
    double target[kSampleLanes] = {};
    int64_t id[kSampleLanes];
    int open = 0;  // rows still looking for their index, as bits
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = r0 + i;
      const bool greedy = u[r] < 0;
      e[i] = exp_row(logits + r * V, V, temperature, greedy, scratch + r * V);
      id[i] = greedy ? e[i].argmax : V - 1;
      target[i] = greedy ? 0.0 : u[r] * double(e[i].total);
      if (!greedy) open |= 1 << i;
    }
    const float* rows_e[kSampleLanes];
    for (int64_t i = 0; i < kSampleLanes; ++i) rows_e[i] = scratch + (r0 + std::min(i, n - 1)) * V;
    inverse_cdf(rows_e, target, V, open, id);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = r0 + i;
      const float* sr = scratch + r * V;
      if (u[r] >= 0)
        while (id[i] > 0 && sr[id[i]] == 0.0f) --id[i];  // rounding pushed the target past the end
      const float x =
          temperature != 1.0f ? logits[r * V + id[i]] / temperature : logits[r * V + id[i]];
      out[r] = {id[i], (x - e[i].max) - std::log(e[i].total)};
    }
  }
}

RowSample sample_row(const float* logits, int64_t V, float temperature, double u, float* scratch) {
  RowSample out;
  sample_rows(logits, 1, V, temperature, &u, scratch, &out);
  return out;
}

}  // namespace rlhf::policy::kernels

// The decoding kernels for AVX-512F (decode_kernels.h): matmul_nt's panels, the sampling
// exponentials and attend_group's weighted sum of values; every other kernel is AVX2's
// (decode_kernels_avx2.cpp). Each function carries its instruction set as an attribute
// (internal/isa_target.h).
#include "policy/kernels/internal/decode_kernel_table.h"

#ifdef RLHF_KERNELS_X86

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "policy/kernels/internal/decode_kernels_x86.h"

namespace rlhf::policy::kernels::internal {

namespace {

// AVX-512: R rows times a whole panel (2 vectors of 16), R * 2 accumulators.
// With kPrefetch, the tile also asks for the next panel in memory (wp + K kPanel: the next panel of
// this weight, or the first of the next packed weight), a row of it per k, so the first pass over
// that panel does not wait on memory. The non-temporal hint measured 2-3% faster than the L2 one
// at batch 32 (weights are read once per step; the KV cache, read next, stays cached).
template <int R, bool kPrefetch = false>
RLHF_TARGET_AVX512 void panel_tile_avx512(const float* x, int64_t ldx, const float* wp, int64_t K,
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
RLHF_TARGET_AVX512 void tile_avx512(int64_t n, const float* x, int64_t ldx, const float* wp,
                                    int64_t K, int64_t cols, float* out, int64_t ldo, bool acc) {
  with_rows<12>(n, [&](auto rows) {
    panel_tile_avx512<decltype(rows)::value, kPrefetch>(x, ldx, wp, K, cols, out, ldo, acc);
  });
}

// All `rows` rows of one panel, 12 rows per tile (24 accumulators, 2 weight vectors and a
// broadcast of AVX-512's 32 registers). From kPrefetchRows rows, the first pass over the panel (the
// one that reads it from memory) also fetches the next panel.
RLHF_TARGET_AVX512 void panel_avx512(const float* x, int64_t rows, int64_t ldx, const float* wp,
                                     int64_t K, int64_t cols, float* out, int64_t ldo, bool acc) {
  for (int64_t b = 0; b < rows; b += 12) {
    const int64_t n = std::min<int64_t>(12, rows - b);
    if (b == 0 && rows >= kPrefetchRows)
      tile_avx512<true>(n, x, ldx, wp, K, cols, out, ldo, acc);
    else
      tile_avx512<false>(n, x + b * ldx, ldx, wp, K, cols, out + b * ldo, ldo, acc);
  }
}

// exp_avx2 in 16 lanes: the same operations, so the same bits in every lane. (GCC 12 warns about
// the "undefined" pass-through operand inside unmasked AVX-512 intrinsics, a known false positive;
// off for this and the next function.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
RLHF_TARGET_AVX512 inline __m512 exp_avx512(__m512 x) {
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
RLHF_TARGET_AVX512 float exp_and_sum_avx512(const float* x, float* y, int64_t n, float max) {
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

// (GCC 12's false positive about the pass-through operand again, as above.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// _mm256_hadd_ps in each 128-bit lane: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
RLHF_TARGET_AVX512 inline __m512 hadd_lanes(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}

// hsum8 of decode_kernels_avx2.cpp on both 256-bit halves of 8 vectors at once: lane i of half h
// of the result = the sum of half h of a[i], with the same additions in the same order.
RLHF_TARGET_AVX512 inline __m512 hsum8_halves(const __m512* a) {
  const __m512 s0 = hadd_lanes(hadd_lanes(a[0], a[1]), hadd_lanes(a[2], a[3]));
  const __m512 s1 = hadd_lanes(hadd_lanes(a[4], a[5]), hadd_lanes(a[6], a[7]));
  // [lo0 + hi0 of s0 | of s0's second half | of s1 | of s1's second half], then in order.
  const __m512 sum = _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_shuffle_f32x4(sum, sum, _MM_SHUFFLE(3, 1, 2, 0));
}

// group_scores_avx2 for an even G: two heads side by side in one vector (head g0 in the low 8
// lanes, g0 + 1 in the high 8) against a key block broadcast to both halves, so each half runs the
// AVX2 kernel's accumulator chains and gives its bits at half the multiply-adds.
RLHF_TARGET_AVX512 void group_scores_avx512(const float* q, int64_t G, const float* keys,
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
    for (int64_t g = 0; g < G; g += 2) {
      const float *q0 = q + g * hd, *q1 = q0 + hd;
      __m512 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
      for (int64_t i = 0; i < hd; i += 8) {
        const __m512 qv = _mm512_castpd_ps(
            _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(q0 + i))),
                               _mm256_castps_pd(_mm256_loadu_ps(q1 + i)), 1));
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) {
          const __m512 kv = _mm512_castpd_ps(
              _mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(keys + (l + j) * hd + i))));
          acc[j] = _mm512_fmadd_ps(qv, kv, acc[j]);
        }
      }
      const __m512 s = hsum8_halves(acc);
      _mm256_storeu_ps(scores + g * L + l, _mm512_castps512_ps256(s));
      _mm256_storeu_ps(scores + (g + 1) * L + l,
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    }
  }
  group_scores_from_avx2(q, G, keys, mask, L, hd, scores, last_key, l, inv_total);
}

#pragma GCC diagnostic pop

// attend_group with the weighted sum of values 16 lanes at a time: group_scores_avx2's weights (the
// scores stay AVX2's, whose lane sums set the bits), then each value row read once for two heads
// and up to 64 outputs (one pass for hd <= 64). Each output lane is the same chain of multiply-adds
// in l order as attend_avx2's, so every head gets its bits. hd not a multiple of 16: AVX2's.
RLHF_TARGET_AVX512 void attend_group_avx512(const float* q, int64_t G, const float* keys,
                                            const float* values, const int64_t* mask, int64_t L,
                                            int64_t hd, float* scores, float* out,
                                            const float* last_key, const float* last_value) {
  if (hd % 16 != 0)
    return avx2_decode_kernels().attend_group_hd8(q, G, keys, values, mask, L, hd, scores, out,
                                                  last_key, last_value);
  float inv_total[kMaxGroup];
  if (G % 2 == 0)
    group_scores_avx512(q, G, keys, values, mask, L, hd, scores, last_key, inv_total);
  else
    group_scores_avx2(q, G, keys, values, mask, L, hd, scores, last_key, inv_total);
  const int64_t Lc = last_key ? L - 1 : L;
  for (int64_t g0 = 0; g0 < G; g0 += 2) {
    const int heads = int(std::min<int64_t>(2, G - g0));
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
      const int n = int(std::min<int64_t>(64, hd - i0)) / 16;
      __m512 acc[2][4];
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j) acc[h][j] = _mm512_setzero_ps();
      for (int64_t l = 0; l < L; ++l) {
        const float* v = (l < Lc ? values + l * hd : last_value) + i0;
        for (int h = 0; h < heads; ++h) {
          const float s = scores[(g0 + h) * L + l];
          if (s == 0.0f) continue;
          const __m512 p = _mm512_set1_ps(s * inv_total[g0 + h]);
          for (int j = 0; j < n; ++j)
            acc[h][j] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * j), acc[h][j]);
        }
      }
      for (int h = 0; h < heads; ++h)
        for (int j = 0; j < n; ++j) _mm512_storeu_ps(out + (g0 + h) * hd + i0 + 16 * j, acc[h][j]);
    }
  }
}

}  // namespace

const DecodeKernelTable& avx512_decode_kernels() {
  static const DecodeKernelTable table = [] {
    DecodeKernelTable t = avx2_decode_kernels();
    t.panel = panel_avx512;
    t.exp_and_sum = exp_and_sum_avx512;
    t.attend_group_hd8 = attend_group_avx512;
    return t;
  }();
  return table;
}

}  // namespace rlhf::policy::kernels::internal

#endif  // RLHF_KERNELS_X86

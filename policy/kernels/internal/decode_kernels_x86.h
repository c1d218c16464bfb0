// Internal to policy/kernels: what decode_kernels_avx2.cpp and decode_kernels_avx512.cpp share.
// x86-64 only (included under RLHF_KERNELS_X86).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "policy/kernels/internal/isa_target.h"

namespace rlhf::policy::kernels::internal {

// exp(x) = 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for precision)
// and p the Cephes degree-7 polynomial; relative error about 1e-7 over [-87, 88]. The constants of
// the 8-lane (AVX2) and 16-lane (AVX-512) versions, which do the same operations lane by lane.
constexpr float kExpMin = -87.3f, kExpMax = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                              4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// y_j = exp(x_j - max) (exactly 0 for x_j = -inf; x may be y) from index i on, the blocks of 8
// added into the lanes of acc in order; returns the sum of the lanes, then the tail's
// (decode_kernels_avx2.cpp; the AVX-512 version ends with it).
RLHF_TARGET_AVX2 float exp_and_sum_from(const float* x, float* y, int64_t n, float max, __m256 acc,
                                        int64_t i);

// The softmax weights of attend_group for G <= kMaxGroup heads (decode_kernels_avx2.cpp): scores
// [G, L] = each head's exp(score - max), 0 where masked; inv_total[g] = 1 / the sum of row g. The
// same bits as attend_avx2's weights of each head alone.
RLHF_TARGET_AVX2 void group_scores_avx2(const float* q, int64_t G, const float* keys,
                                        const float* values, const int64_t* mask, int64_t L,
                                        int64_t hd, float* scores, const float* last_key,
                                        float* inv_total);

// group_scores_avx2 once the scores of positions [0, l) (a whole number of blocks of 8) are in:
// the scores from l on, the mask and the softmax of each head.
RLHF_TARGET_AVX2 void group_scores_from_avx2(const float* q, int64_t G, const float* keys,
                                             const int64_t* mask, int64_t L, int64_t hd,
                                             float* scores, const float* last_key, int64_t l,
                                             float* inv_total);

}  // namespace rlhf::policy::kernels::internal

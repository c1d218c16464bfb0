// Internal to policy/kernels: the decoding kernels of one instruction set, as the dispatch in
// decode_kernels.cpp calls them. decode_kernels.cpp holds the portable table (the reference twins),
// decode_kernels_avx2.cpp and decode_kernels_avx512.cpp the others. The tables are constant after
// their first use; any thread may read them.
#pragma once

#include <cstdint>
#include <type_traits>

#include "policy/kernels/decode_kernels.h"
#include "policy/kernels/internal/isa_target.h"
#include "policy/kernels/isa.h"

namespace rlhf::policy::kernels::internal {

constexpr int64_t kPanel = PackedWeight::kPanel;

// The most query heads one call of attend_group_hd8 takes (attend_group splits larger groups).
constexpr int64_t kMaxGroup = 8;

// Row counts from which the first pass over a panel fetches the next one. Measured on the 2-core
// VM (AVX-512): batch 32 decodes 8-10% faster with it; batch 1, which streams each panel once
// (the hardware prefetcher already follows it), 8% slower.
constexpr int64_t kPrefetchRows = 8;

// Each entry computes what the public function of decode_kernels.h it is named after computes, on
// one instruction set; the comments say where it differs.
struct DecodeKernelTable {
  // matmul_nt for one packed panel wp (K rows of kPanel columns) and all `rows` rows of x: into
  // the first `cols` columns of out (row stride ldo), added to them when accumulating.
  void (*panel)(const float* x, int64_t rows, int64_t ldx, const float* wp, int64_t K, int64_t cols,
                float* out, int64_t ldo, bool accumulate);
  float (*dot)(const float* a, const float* b, int64_t n);
  // sum_i x_i^2 in double (rms_norm_rows).
  double (*sum_of_squares)(const float* x, int64_t n);
  // attend() for hd a multiple of 8; nullptr: the portable loop over `dot` for every hd.
  void (*attend_hd8)(const float* q, const float* keys, const float* values, const int64_t* mask,
                     int64_t L, int64_t hd, float* scratch, float* out, const float* last_key,
                     const float* last_value);
  // attend_group() for 1 <= G <= kMaxGroup heads and hd a multiple of 8 (scratch: G * L floats);
  // nullptr: attend_hd8 for each head.
  void (*attend_group_hd8)(const float* q, int64_t G, const float* keys, const float* values,
                           const int64_t* mask, int64_t L, int64_t hd, float* scratch, float* out,
                           const float* last_key, const float* last_value);
  void (*swiglu)(const float* gate, const float* up, float* out, int64_t n);
  // y_j = x_j / temperature for j < n; returns the largest y.
  float (*scale_and_max)(const float* x, int64_t n, float temperature, float* y);
  // The largest of x[0..n), n >= 1.
  float (*max)(const float* x, int64_t n);
  // An index at or before the first j with x[j] == value, where the scan for it starts.
  int64_t (*first_equal_from)(const float* x, int64_t n, float value);
  // y_j = exp(x_j - max) for j < n (exactly 0 for x_j = -inf; x may be y); returns their sum.
  float (*exp_and_sum)(const float* x, float* y, int64_t n, float max);
  // c[i] += e[i][k] in double for k = j..end-1 in order, for each of the kSampleLanes rows.
  void (*add_block)(const float* const e[kSampleLanes], int64_t j, int64_t end,
                    double c[kSampleLanes]);
};

// The table of the instruction set `isa` (which the CPU must support).
const DecodeKernelTable& decode_kernels_for(Isa isa);
#ifdef RLHF_KERNELS_X86
const DecodeKernelTable& avx2_decode_kernels();    // decode_kernels_avx2.cpp
const DecodeKernelTable& avx512_decode_kernels();  // decode_kernels_avx512.cpp
#endif

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

}  // namespace rlhf::policy::kernels::internal

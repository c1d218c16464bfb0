// The float token log-probability row kernels (logprob_rows.h) compiled for AVX2 + FMA: the same
// loops as the portable ones (internal/logprob_rows_body.h), inlined into functions that carry the
// instruction set as an attribute, in a file compiled with -fopenmp-simd -fno-trapping-math.
#include "policy/kernels/internal/logprob_rows_body.h"

#ifdef RLHF_KERNELS_X86

namespace rlhf::policy::kernels::internal {

namespace {

template <typename T, bool kEntropy>
RLHF_TARGET_AVX2 void logprob_rows_avx2(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent,
                                        int64_t begin, int64_t end, int64_t V) {
  logprob_rows_body<T, kEntropy>(z, tgt, lp, lse, ent, begin, end, V);
}
template <typename T, bool kEntropy>
RLHF_TARGET_AVX2 void logprob_grad_rows_avx2(const T* z, const int64_t* tgt, const T* lse,
                                             const T* ent, const T* glp, const T* gent, T* out,
                                             int64_t begin, int64_t end, int64_t V) {
  logprob_grad_rows_body<T, kEntropy>(z, tgt, lse, ent, glp, gent, out, begin, end, V);
}

}  // namespace

const LogprobRowKernels<float>& avx2_logprob_row_kernels() {
  static constexpr LogprobRowKernels<float> kTable = {
      logprob_rows_avx2<float, false>, logprob_rows_avx2<float, true>,
      logprob_grad_rows_avx2<float, false>, logprob_grad_rows_avx2<float, true>};
  return kTable;
}

}  // namespace rlhf::policy::kernels::internal

#endif  // RLHF_KERNELS_X86

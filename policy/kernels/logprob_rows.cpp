// The dispatch of the token log-probability row kernels (logprob_rows.h) and their portable
// versions (the reference twins of logprob_rows_avx2.cpp's), compiled with -fopenmp-simd
// -fno-trapping-math (CMakeLists.txt).
#include "policy/kernels/logprob_rows.h"

#include "policy/kernels/internal/logprob_rows_body.h"
#include "policy/kernels/isa.h"

namespace rlhf::policy::kernels {

namespace {

using internal::LogprobRowKernels;

template <typename T, bool kEntropy>
void logprob_rows_portable(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent, int64_t begin,
                           int64_t end, int64_t V) {
  internal::logprob_rows_body<T, kEntropy>(z, tgt, lp, lse, ent, begin, end, V);
}
template <typename T, bool kEntropy>
void logprob_grad_rows_portable(const T* z, const int64_t* tgt, const T* lse, const T* ent,
                                const T* glp, const T* gent, T* out, int64_t begin, int64_t end,
                                int64_t V) {
  internal::logprob_grad_rows_body<T, kEntropy>(z, tgt, lse, ent, glp, gent, out, begin, end, V);
}

template <typename T>
constexpr LogprobRowKernels<T> kPortable = {
    logprob_rows_portable<T, false>, logprob_rows_portable<T, true>,
    logprob_grad_rows_portable<T, false>, logprob_grad_rows_portable<T, true>};

// The kernels of the active instruction set: AVX2's float rows on avx2 and avx512.
const LogprobRowKernels<float>& active_kernels(const float*) {
#ifdef RLHF_KERNELS_X86
  if (active_isa() >= Isa::kAvx2) return internal::avx2_logprob_row_kernels();
#endif
  return kPortable<float>;
}
const LogprobRowKernels<double>& active_kernels(const double*) {
  active_isa();  // (no double versions; read for the same errors as float rows)
  return kPortable<double>;
}

template <typename T>
void rows(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent, int64_t begin, int64_t end,
          int64_t V) {
  const LogprobRowKernels<T>& k = active_kernels(z);
  (ent ? k.rows_entropy : k.rows)(z, tgt, lp, lse, ent, begin, end, V);
}

template <typename T>
void grad_rows(const T* z, const int64_t* tgt, const T* lse, const T* ent, const T* glp,
               const T* gent, T* out, int64_t begin, int64_t end, int64_t V) {
  const LogprobRowKernels<T>& k = active_kernels(z);
  (ent ? k.grad_rows_entropy : k.grad_rows)(z, tgt, lse, ent, glp, gent, out, begin, end, V);
}

}  // namespace

void logprob_rows(const float* z, const int64_t* tgt, float* lp, float* lse, float* ent,
                  int64_t begin, int64_t end, int64_t V) {
  rows(z, tgt, lp, lse, ent, begin, end, V);
}
void logprob_rows(const double* z, const int64_t* tgt, double* lp, double* lse, double* ent,
                  int64_t begin, int64_t end, int64_t V) {
  rows(z, tgt, lp, lse, ent, begin, end, V);
}

void logprob_grad_rows(const float* z, const int64_t* tgt, const float* lse, const float* ent,
                       const float* glp, const float* gent, float* out, int64_t begin, int64_t end,
                       int64_t V) {
  grad_rows(z, tgt, lse, ent, glp, gent, out, begin, end, V);
}
void logprob_grad_rows(const double* z, const int64_t* tgt, const double* lse, const double* ent,
                       const double* glp, const double* gent, double* out, int64_t begin,
                       int64_t end, int64_t V) {
  grad_rows(z, tgt, lse, ent, glp, gent, out, begin, end, V);
}

}  // namespace rlhf::policy::kernels

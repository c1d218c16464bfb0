// Token log-probability kernels on rows of logits: the CPU loops behind policy/model/fused_ops.h's
// token_logprobs / token_logprob_stats and their backward, on raw row-major buffers (no libtorch).
//
// Each row is computed by one call in a fixed order, so results do not depend on how rows are split
// over threads. The row loops are `omp simd` loops (compiled with -fopenmp-simd -fno-trapping-math,
// see CMakeLists.txt): their partial sums live in vector lanes, so the summation order depends on
// V and the vector width only. Float rows have an AVX2 + FMA version (logprob_rows_avx2.cpp, 3x the
// SSE2 baseline's speed on exp), used when the active instruction set (isa.h) is avx2 or avx512;
// double rows run the portable loops on every instruction set. The two float versions can differ
// in the last bits (wider lanes sum in another order).
//
// Thread safety: the functions read only their inputs and write only their own rows of the
// outputs; calls on disjoint rows may run concurrently. Each call reads the active instruction set
// once (isa.h, which also says what it throws). No other errors: the caller checks shapes and that
// every target is < V.
#pragma once

#include <cstdint>

namespace rlhf::policy::kernels {

// For the rows n in [begin, end) of logits z [N, V]: lse[n] = log sum_j exp(z[n, j]),
// lp[n] = z[n, tgt[n]] - lse[n] (0 where tgt[n] < 0: an ignored position), and, when ent is not
// null, ent[n] = -sum_j p_j log p_j for p = softmax(z[n]). exp is a float32 polynomial (Cephes
// expf, about 1 ulp) for float rows, std::exp for double rows.
void logprob_rows(const float* z, const int64_t* tgt, float* lp, float* lse, float* ent,
                  int64_t begin, int64_t end, int64_t V);
void logprob_rows(const double* z, const int64_t* tgt, double* lp, double* lse, double* ent,
                  int64_t begin, int64_t end, int64_t V);

// The gradient of g * log p_t + gh * H with respect to the logits, for the rows [begin, end):
// out[n, j] = -p_j * (g_n + gh_n * (log p_j + H_n)) + (j == t ? g_n : 0), p_j = exp(z_j - lse_n),
// from logprob_rows' lse (and ent). g_n = glp[n] (0 where glp is null or tgt[n] < 0). With ent null
// the entropy term is left out (gent is not read); with ent given, gh_n = gent[n] (0 where gent is
// null) and H_n = ent[n]. `out` may be `z` itself (each element is read before it is written).
void logprob_grad_rows(const float* z, const int64_t* tgt, const float* lse, const float* ent,
                       const float* glp, const float* gent, float* out, int64_t begin, int64_t end,
                       int64_t V);
void logprob_grad_rows(const double* z, const int64_t* tgt, const double* lse, const double* ent,
                       const double* glp, const double* gent, double* out, int64_t begin,
                       int64_t end, int64_t V);

}  // namespace rlhf::policy::kernels

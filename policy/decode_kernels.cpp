#include "policy/decode_kernels.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RLHF_HAVE_AVX2_KERNEL 1
#define RLHF_AVX2 __attribute__((target("avx2,fma")))
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

void block_portable(const float* x, int64_t B, int64_t K, int64_t ldx, const MatmulJob& job,
                    int64_t j0, int64_t j1) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = j0; j < j1; ++j) {
      const float s = dot_portable(x + b * ldx, job.w + j * K, K);
      float& o = job.out[b * job.ldo + j];
      o = job.accumulate ? o + s : s;
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

template <int R, int C>
RLHF_AVX2 void tile_avx2(const float* x, int64_t ldx, const float* w, int64_t K, float* out,
                         int64_t ldo, bool accumulate) {
  __m256 acc[R][C];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
    _Pragma("GCC unroll 8") for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[C];
    _Pragma("GCC unroll 8") for (int c = 0; c < C; ++c) wv[c] = _mm256_loadu_ps(w + c * K + k);
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * ldx + k);
      _Pragma("GCC unroll 8") for (int c = 0; c < C; ++c) acc[r][c] =
          _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t kk = k; kk < K; ++kk) s += x[r * ldx + kk] * w[c * K + kk];
      float& o = out[r * ldo + c];
      o = accumulate ? o + s : s;
    }
}

// All B rows times C weight rows, 3 activation rows per tile (12 accumulators + 4 weight vectors
// fit AVX2's 16 registers).
template <int C>
RLHF_AVX2 void rows_avx2(const float* x, int64_t B, int64_t K, int64_t ldx, const float* w,
                         float* out, int64_t ldo, bool acc) {
  int64_t b = 0;
  for (; b + 3 <= B; b += 3) tile_avx2<3, C>(x + b * ldx, ldx, w, K, out + b * ldo, ldo, acc);
  if (B - b == 2) tile_avx2<2, C>(x + b * ldx, ldx, w, K, out + b * ldo, ldo, acc);
  if (B - b == 1) tile_avx2<1, C>(x + b * ldx, ldx, w, K, out + b * ldo, ldo, acc);
}

RLHF_AVX2 void block_avx2(const float* x, int64_t B, int64_t K, int64_t ldx, const MatmulJob& job,
                          int64_t j0, int64_t j1) {
  const float* w = job.w;
  float* out = job.out;
  const int64_t ldo = job.ldo;
  const bool acc = job.accumulate;
  int64_t j = j0;
  if (B == 1)  // a matrix-vector product: 8 weight rows at a time
    for (; j + 8 <= j1; j += 8) tile_avx2<1, 8>(x, ldx, w + j * K, K, out + j, ldo, acc);
  for (; j + 4 <= j1; j += 4) rows_avx2<4>(x, B, K, ldx, w + j * K, out + j, ldo, acc);
  for (; j < j1; ++j) rows_avx2<1>(x, B, K, ldx, w + j * K, out + j, ldo, acc);
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

// attend() for hd a multiple of 8: scores of 8 keys at a time, then the weighted sum of values with
// 32 output lanes at a time in registers.
RLHF_AVX2 void attend_avx2(const float* q, const float* keys, const float* values,
                           const int64_t* mask, int64_t L, int64_t hd, float* scores, float* out) {
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] =
          _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + (l + j) * hd + i), acc[j]);
    }
    _mm256_storeu_ps(scores + l, hsum8(acc));
  }
  for (; l < L; ++l) scores[l] = dot_avx2(q, keys + l * hd, hd);
  float max_score = -INFINITY;
  for (l = 0; l < L; ++l)
    if (mask[l]) max_score = std::max(max_score, scores[l]);
  float total = 0;
  for (l = 0; l < L; ++l) total += scores[l] = mask[l] ? std::exp(scores[l] - max_score) : 0.0f;
  const float inv_total = 1.0f / total;
  for (int64_t i0 = 0; i0 < hd; i0 += 32) {
    const int n = int(std::min<int64_t>(32, hd - i0)) / 8;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (l = 0; l < L; ++l) {
      if (scores[l] == 0.0f) continue;
      const __m256 p = _mm256_set1_ps(scores[l] * inv_total);
      const float* v = values + l * hd + i0;
      for (int j = 0; j < n; ++j) acc[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    for (int j = 0; j < n; ++j) _mm256_storeu_ps(out + i0 + 8 * j, acc[j]);
  }
}

// exp(x) for 8 lanes: 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for
// precision) and p the Cephes degree-7 polynomial; relative error about 1e-7 over [-87, 88].
RLHF_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
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

// y_j = exp(y_j - max) in place; returns the sum.
RLHF_AVX2 float exp_and_sum_avx2(float* y, int64_t n, float max) {
  __m256 acc = _mm256_setzero_ps();
  const __m256 m = _mm256_set1_ps(max);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(y + i), m));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float s = hsum(acc);
  for (; i < n; ++i) s += y[i] = std::exp(y[i] - max);
  return s;
}
#endif

bool detect_avx2() {
#ifdef RLHF_HAVE_AVX2_KERNEL
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const bool kAvx2 = detect_avx2();

// Output columns per chunk: enough work per hand-off, enough chunks to share.
int64_t columns_per_chunk(int64_t B) { return B >= 8 ? 16 : (B >= 2 ? 32 : 64); }

}  // namespace

bool has_avx2_kernel() { return kAvx2; }

float dot(const float* a, const float* b, int64_t n) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (kAvx2) return dot_avx2(a, b, n);
#endif
  return dot_portable(a, b, n);
}

void matmul_nt(const float* x, int64_t B, int64_t K, int64_t ldx,
               const std::vector<MatmulJob>& jobs, LoopPool& pool) {
  const int64_t cols = columns_per_chunk(B);
  std::vector<int64_t> first_chunk(jobs.size() + 1, 0);  // chunk index where each job starts
  for (size_t i = 0; i < jobs.size(); ++i)
    first_chunk[i + 1] = first_chunk[i] + (jobs[i].n + cols - 1) / cols;
  pool.parallel_for(first_chunk.back(), [&](int64_t chunk) {
    const size_t i =
        std::upper_bound(first_chunk.begin(), first_chunk.end(), chunk) - first_chunk.begin() - 1;
    const MatmulJob& job = jobs[i];
    const int64_t j0 = (chunk - first_chunk[i]) * cols, j1 = std::min(job.n, j0 + cols);
#ifdef RLHF_HAVE_AVX2_KERNEL
    if (kAvx2) return block_avx2(x, B, K, ldx, job, j0, j1);
#endif
    block_portable(x, B, K, ldx, job, j0, j1);
  });
}

void rms_norm_rows(const float* x, const float* w, float* y, int64_t B, int64_t D, double eps) {
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = x + b * D;
    float* yr = y + b * D;
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += double(xr[j]) * double(xr[j]);
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
            int64_t hd, float* scratch, float* out) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (kAvx2 && hd % 8 == 0) return attend_avx2(q, keys, values, mask, L, hd, scratch, out);
#endif
  float max_score = -INFINITY;
  for (int64_t l = 0; l < L; ++l)
    if (mask[l]) max_score = std::max(max_score, scratch[l] = dot(q, keys + l * hd, hd));
  float total = 0;
  for (int64_t l = 0; l < L; ++l)
    if (mask[l]) total += scratch[l] = std::exp(scratch[l] - max_score);
  std::fill(out, out + hd, 0.0f);
  for (int64_t l = 0; l < L; ++l) {
    if (!mask[l]) continue;
    const float p = scratch[l] / total;
    const float* v = values + l * hd;
    for (int64_t i = 0; i < hd; ++i) out[i] += p * v[i];
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (kAvx2) return swiglu_avx2(gate, up, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g * (1.0f / (1.0f + std::exp(-g)))) * up[i];
  }
}

RowSample sample_row(const float* logits, int64_t V, float temperature, double u, float* scratch) {
  float max = -INFINITY, total = 0;
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (kAvx2) {
    max = scale_and_max_avx2(logits, V, temperature, scratch);
  } else
#endif
  {
    for (int64_t j = 0; j < V; ++j) max = std::max(max, scratch[j] = logits[j] / temperature);
  }
  int64_t argmax = 0;
  while (argmax + 1 < V && scratch[argmax] != max) ++argmax;
  const float x_argmax = scratch[argmax];
#ifdef RLHF_HAVE_AVX2_KERNEL
  if (kAvx2) {
    total = exp_and_sum_avx2(scratch, V, max);
  } else
#endif
  {
    for (int64_t j = 0; j < V; ++j) total += scratch[j] = std::exp(scratch[j] - max);
  }
  const float log_total = std::log(total);
  if (u < 0) return {argmax, (x_argmax - max) - log_total};
  // Inverse CDF: the first index whose running sum exceeds u * total (zero weights never chosen).
  const double target = u * double(total);
  double cdf = 0;
  int64_t id = V - 1;
  for (int64_t j = 0; j < V; ++j) {
    cdf += double(scratch[j]);
    if (cdf > target) {
      id = j;
      break;
    }
  }
  while (id > 0 && scratch[id] == 0.0f) --id;  // rounding pushed the target past the last weight
  const float x = logits[id] / temperature;
  return {id, (x - max) - log_total};
}

}  // namespace rlhf::policy::kernels

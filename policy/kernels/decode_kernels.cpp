// The dispatch of the decoding kernels (decode_kernels.h) and their portable reference twins; the
// AVX2 and AVX-512 versions are in decode_kernels_avx2.cpp and decode_kernels_avx512.cpp. Every
// public function reads the active instruction set (isa.h) once and runs on its table to the end.
#include "policy/kernels/decode_kernels.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/error.h"
#include "policy/kernels/internal/decode_kernel_table.h"
#include "policy/kernels/isa.h"

namespace rlhf::policy::kernels {

namespace internal {

namespace {

// ---------------------------------------------------------------------------------------------
// Portable kernels: the reference twins of the AVX2 and AVX-512 ones.

float dot_portable(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
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

double sum_of_squares_portable(const float* x, int64_t n) {
  double ss = 0;
  for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * double(x[j]);
  return ss;
}

void swiglu_portable(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g * (1.0f / (1.0f + std::exp(-g)))) * up[i];
  }
}

float scale_and_max_portable(const float* x, int64_t n, float temperature, float* y) {
  float best = -INFINITY;
  for (int64_t j = 0; j < n; ++j) best = std::max(best, y[j] = x[j] / temperature);
  return best;
}

float max_portable(const float* x, int64_t n) {
  float best = -INFINITY;
  for (int64_t j = 0; j < n; ++j) best = std::max(best, x[j]);
  return best;
}

int64_t first_equal_from_portable(const float*, int64_t, float) { return 0; }

float exp_and_sum_portable(const float* x, float* y, int64_t n, float max) {
  float total = 0.0f;
  for (int64_t j = 0; j < n; ++j) total += y[j] = std::exp(x[j] - max);
  return total;
}

void add_block_portable(const float* const e[kSampleLanes], int64_t j, int64_t end,
                        double c[kSampleLanes]) {
  for (int64_t k = j; k < end; ++k)
    for (int64_t i = 0; i < kSampleLanes; ++i) c[i] += double(e[i][k]);
}

constexpr DecodeKernelTable kPortable = {panel_portable,
                                         dot_portable,
                                         sum_of_squares_portable,
                                         nullptr,  // attend: the loop in attend() below
                                         nullptr,  // attend_group: attend() per head
                                         swiglu_portable,
                                         scale_and_max_portable,
                                         max_portable,
                                         first_equal_from_portable,
                                         exp_and_sum_portable,
                                         add_block_portable};

}  // namespace

const DecodeKernelTable& decode_kernels_for(Isa isa) {
#ifdef RLHF_KERNELS_X86
  if (isa == Isa::kAvx512) return avx512_decode_kernels();
  if (isa == Isa::kAvx2) return avx2_decode_kernels();
#endif
  return kPortable;
}

}  // namespace internal

namespace {

using internal::DecodeKernelTable;
using internal::kPanel;

// The kernels of the active instruction set.
const DecodeKernelTable& active_kernels() { return internal::decode_kernels_for(active_isa()); }

// Panels per chunk of matmul_nt: enough work per hand-off, enough chunks to share.
int64_t panels_per_chunk(int64_t B) { return B >= 8 ? 1 : (B >= 2 ? 2 : 4); }

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

float dot(const float* a, const float* b, int64_t n) { return active_kernels().dot(a, b, n); }

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
  const DecodeKernelTable& kernels = active_kernels();
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
      kernels.panel(x, B, ldx, job.w->panel(p), K, cols, out, ldo, job.accumulate);
      if (swiglu)
        for (int64_t b = 0; b < B; ++b) {
          const float* row = sums.data() + b * kPanel;
          kernels.swiglu(row, row + kPanel / 2, job.out + b * job.ldo + first, outputs);
        }
    }
  });
}

void rms_norm_rows(const float* x, const float* w, float* y, int64_t B, int64_t D, double eps) {
  const DecodeKernelTable& kernels = active_kernels();
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = x + b * D;
    float* yr = y + b * D;
    const double ss = kernels.sum_of_squares(xr, D);
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
  const DecodeKernelTable& kernels = active_kernels();
  if (kernels.attend_hd8 && hd % 8 == 0)
    return kernels.attend_hd8(q, keys, values, mask, L, hd, scratch, out, last_key, last_value);
  const int64_t Lc = last_key ? L - 1 : L;  // positions read from the cache
  auto key = [&](int64_t l) { return l < Lc ? keys + l * hd : last_key; };
  auto value = [&](int64_t l) { return l < Lc ? values + l * hd : last_value; };
  float max_score = -INFINITY;
  for (int64_t l = 0; l < L; ++l)
    if (mask[l]) max_score = std::max(max_score, scratch[l] = kernels.dot(q, key(l), hd));
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

void attend_group(const float* q, int64_t G, const float* keys, const float* values,
                  const int64_t* mask, int64_t L, int64_t hd, float* scratch, float* out,
                  const float* last_key, const float* last_value) {
  const DecodeKernelTable& kernels = active_kernels();
  if (G == 1 || !kernels.attend_group_hd8 || hd % 8 != 0) {
    for (int64_t g = 0; g < G; ++g)
      attend(q + g * hd, keys, values, mask, L, hd, scratch + g * L, out + g * hd, last_key,
             last_value);
    return;
  }
  for (int64_t g0 = 0; g0 < G; g0 += internal::kMaxGroup) {
    const int64_t n = std::min(internal::kMaxGroup, G - g0);
    kernels.attend_group_hd8(q + g0 * hd, n, keys, values, mask, L, hd, scratch + g0 * L,
                             out + g0 * hd, last_key, last_value);
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  active_kernels().swiglu(gate, up, out, n);
}

namespace {

// The softmax of one row up to its normalisation: scratch = e = exp(x - max) for x = logits /
// temperature (temperature 1: the logits themselves, no division), max, sum(e), and the first
// largest x when `argmax` is wanted.
struct RowExp {
  float max, total;
  int64_t argmax;
};

RowExp exp_row(const DecodeKernelTable& kernels, const float* logits, int64_t V, float temperature,
               bool argmax, float* scratch) {
  RowExp r{-INFINITY, 0.0f, 0};
  const float* x = logits;
  if (temperature != 1.0f) {
    x = scratch;
    r.max = kernels.scale_and_max(logits, V, temperature, scratch);
  } else {
    r.max = kernels.max(logits, V);
  }
  if (argmax) {
    r.argmax = kernels.first_equal_from(x, V, r.max);
    while (r.argmax + 1 < V && x[r.argmax] != r.max) ++r.argmax;
  }
  r.total = kernels.exp_and_sum(x, scratch, V, r.max);
  return r;
}

constexpr int64_t kCdfBlock = 16;  // indices between checks of the running sums

// For each row i whose bit is set in `open`: id[i] = the first index j whose running sum of
// e[i][0..j] (in double, in index order, as one sequential chain) exceeds target[i]; rows that
// never exceed it keep their id. The kSampleLanes chains run side by side, branch-free over blocks
// of 16 indices; a row whose sum crossed its target inside a block redoes that block alone from
// the block's starting sum (the same additions, so the same sums) to find the index.
void inverse_cdf(const DecodeKernelTable& kernels, const float* const e[kSampleLanes],
                 const double target[kSampleLanes], int64_t V, int open, int64_t id[kSampleLanes]) {
  static_assert(kSampleLanes == 4, "add_block adds four chains");
  double now[kSampleLanes] = {0, 0, 0, 0};
  for (int64_t j = 0; open && j < V; j += kCdfBlock) {
    const int64_t end = std::min(V, j + kCdfBlock);
    const double start[kSampleLanes] = {now[0], now[1], now[2], now[3]};
    kernels.add_block(e, j, end, now);
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
  const DecodeKernelTable& kernels = active_kernels();
  for (int64_t r0 = 0; r0 < rows; r0 += kSampleLanes) {
    const int64_t n = std::min<int64_t>(kSampleLanes, rows - r0);
    RowExp e[kSampleLanes];
    double target[kSampleLanes] = {};
    int64_t id[kSampleLanes];
    int open = 0;  // rows still looking for their index, as bits
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = r0 + i;
      const bool greedy = u[r] < 0;
      e[i] = exp_row(kernels, logits + r * V, V, temperature, greedy, scratch + r * V);
      id[i] = greedy ? e[i].argmax : V - 1;
      target[i] = greedy ? 0.0 : u[r] * double(e[i].total);
      if (!greedy) open |= 1 << i;
    }
    const float* rows_e[kSampleLanes];
    for (int64_t i = 0; i < kSampleLanes; ++i) rows_e[i] = scratch + (r0 + std::min(i, n - 1)) * V;
    inverse_cdf(kernels, rows_e, target, V, open, id);
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

// Hand-written float32 CPU kernels for the decoding step (policy/decoding/fast_decode.h), on raw
// row-major buffers, with no allocation and no libtorch dispatch.
//
// Why: a decoding step multiplies a few rows ([B, D] activations, B = 1..64) by each weight. For
// these skinny shapes OpenBLAS packs the whole weight before every multiply and hands work to its
// threads per call; measured on the 2-core VM (OPENBLAS_CORETYPE=Haswell), torch::mm reached
// 3-4 GFLOP/s at B = 1 and 34-40 at B = 32. The kernel here packs each weight once per engine
// and reached 186 GFLOP/s on one thread at B = 32 with AVX-512 (docs/performance.md, "Decoding
// engine" and "Batch-32 decode at 8x llama2.c").
//
// Instruction sets: each kernel has a portable version (decode_kernels.cpp, the reference twin),
// an AVX2 + FMA one (decode_kernels_avx2.cpp) and, for matmul_nt, sampling's exponentials and
// attend_group, an AVX-512 one (decode_kernels_avx512.cpp); which runs is the active instruction
// set of isa.h, read once at the start of each call. matmul_nt gives the same bits on every
// instruction set; attention, SwiGLU and sampling use a vector exp on AVX2 and AVX-512 and std::exp
// otherwise, so they can differ in the last bits between the portable version and the others. All
// can differ from libtorch in the last bits.
//
// Results do not depend on the number of threads: every output element is computed by one
// thread, in a fixed order.
//
// Thread safety: the functions keep no state; calls with disjoint outputs may run concurrently.
// Errors: matmul_nt and PackedWeight's parts constructor throw rlhf::Error on the mismatches their
// comments name; every kernel can throw what isa.h's active_isa() throws (a bad RLHF_CPU_ISA),
// which a program that calls active_isa() at start-up has already seen.
#pragma once

#include <cstdint>
#include <vector>

#include "policy/kernels/loop_pool.h"

namespace rlhf::policy::kernels {

// A weight w [n, K] (a torch Linear weight: out_features x in_features) copied into the layout
// matmul_nt reads: panels of kPanel output columns, each k-major (panel p holds w[p * kPanel + c,
// k] at [k * kPanel + c]), the last one padded with zeros. A tile then reads one contiguous panel
// and needs no horizontal sums.
class PackedWeight {
 public:
  static constexpr int64_t kPanel = 32;
  // Floats the packed form of an [n, K] weight takes.
  static int64_t floats(int64_t n, int64_t K) { return (n + kPanel - 1) / kPanel * kPanel * K; }

  PackedWeight() = default;
  PackedWeight(PackedWeight&&) = default;  // keeps the owned buffer, so data_ stays valid
  PackedWeight& operator=(PackedWeight&&) = default;
  PackedWeight(const PackedWeight&) = delete;
  PackedWeight& operator=(const PackedWeight&) = delete;
  // Packs w [n, K] into storage of its own.
  PackedWeight(const float* w, int64_t n, int64_t K);
  // How rows map to panel columns. kRows: the parts stacked in order (q, k and v as one weight).
  // kPairs: two parts of equal rows n interleaved by half panels, panel p holding rows
  // [16p, 16p + 16) of parts[0] in columns 0..15 and the same rows of parts[1] in columns 16..31
  // (gate and up, for the SwiGLU epilogue of matmul_nt).
  enum class Layout { kRows, kPairs };

  // Packs the row blocks parts[i] ([rows[i], K] each) into `storage` (floats(sum of rows, K)
  // floats, owned by the caller, which keeps it alive), one panel per chunk of `pool`.
  PackedWeight(const std::vector<const float*>& parts, const std::vector<int64_t>& rows, int64_t K,
               float* storage, LoopPool& pool, Layout layout = Layout::kRows);

  Layout layout() const { return layout_; }
  // Output columns: the sum of rows (kRows), or the rows of one part (kPairs: one output per pair).
  int64_t n() const { return n_; }
  int64_t K() const { return K_; }
  // Output columns per panel: kPanel, or kPanel / 2 pairs.
  int64_t outputs_per_panel() const { return layout_ == Layout::kPairs ? kPanel / 2 : kPanel; }
  int64_t panels() const { return (n_ + outputs_per_panel() - 1) / outputs_per_panel(); }
  const float* panel(int64_t p) const { return data_ + p * K_ * kPanel; }

 private:
  int64_t n_ = 0, K_ = 0;
  Layout layout_ = Layout::kRows;
  std::vector<float> owned_;
  float* data_ = nullptr;
};

// One product of matmul_nt: out[b * ldo + j] (+)= sum_k x[b, k] * w[j, k] for j < w.n(); with
// the SwiGLU epilogue (a kPairs weight of gate and up, no accumulate),
// out[b * ldo + j] = swiglu(gate_j, up_j) for the two sums of pair j, as swiglu() computes it.
struct MatmulJob {
  enum class Epilogue { kNone, kSwiGlu };
  const PackedWeight* w = nullptr;
  float* out = nullptr;
  int64_t ldo = 0;
  bool accumulate = false;  // out += x w^T (a residual connection) instead of out = x w^T
  Epilogue epilogue = Epilogue::kNone;
};

// x [B, K] with row stride ldx, times every job's weight transposed (each w.K() == K), split over
// `pool` in panels of output columns (all jobs in one loop, so q, k and v cost one hand-off).
// Outputs of different jobs must not overlap.
//
// Every output is one fused multiply-add chain over k = 0..K-1 in order, started at 0 (then added
// to out when accumulating): the result is the same bits on every instruction set, for every
// batch size (a row does not depend on the others) and every thread count.
void matmul_nt(const float* x, int64_t B, int64_t K, int64_t ldx,
               const std::vector<MatmulJob>& jobs, LoopPool& pool);

// sum_i a[i] * b[i] (the same kernel family as matmul_nt).
float dot(const float* a, const float* b, int64_t n);

// RMSNorm of each of the B rows of x [B, D]: y = x / sqrt(mean(x^2) + eps) * w, with the sum of
// squares in double, as fused::rms_norm computes it.
void rms_norm_rows(const float* x, const float* w, float* y, int64_t B, int64_t D, double eps);

// RoPE (Hugging Face rotate-half) of `heads` heads of size hd laid side by side in x (in place):
// x1' = (x1 cos - x2 sin) * scale, x2' = (x2 cos + x1 sin) * scale per head, x1/x2 its halves;
// cos/sin [hd / 2] for this token's position.
void rope_heads(float* x, const float* cos, const float* sin, int64_t heads, int64_t hd,
                float scale);

// Attention of one query head q [hd] (already scaled by 1/sqrt(hd)) over keys/values [L, hd]
// (rows with stride hd), skipping the positions whose mask is 0: out = softmax(q k^T) v.
// scratch: L floats. At least one position must be unmasked. With last_key / last_value, position
// L - 1 is read from them instead of keys / values (the decoder's newest token, still in its row
// buffer: reading it back from the cache line just written would wait for that line to arrive
// from memory).
void attend(const float* q, const float* keys, const float* values, const int64_t* mask, int64_t L,
            int64_t hd, float* scratch, float* out, const float* last_key = nullptr,
            const float* last_value = nullptr);

// attend() for the G query heads q [G, hd] (head g at q + g hd) that share one kv head
// (grouped-query attention): out [G, hd], scratch G * L floats. Each head's output is bit for bit
// what attend() gives it alone; the vector kernels read each block of keys and each value row once
// for all the heads instead of once per head (G = 1: attend() itself).
void attend_group(const float* q, int64_t G, const float* keys, const float* values,
                  const int64_t* mask, int64_t L, int64_t hd, float* scratch, float* out,
                  const float* last_key = nullptr, const float* last_value = nullptr);

// silu(gate) * up for n elements (SwiGLU): out[i] = gate[i] * sigmoid(gate[i]) * up[i].
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// One draw from softmax(logits / temperature) for a row of V logits, by inverting the CDF:
// e_j = exp(x_j - max x) with x = logits / temperature, and the chosen index is the first whose
// running sum of e (in double) exceeds u * sum(e), for u in [0, 1) (the uniform generate() draws
// per row). u < 0 picks the first largest logit instead (greedy). Also returns the chosen index's
// log-probability, x_id - max - log(sum e). scratch: V floats. The same distribution as
// generate()'s libtorch sampling; a draw can differ from it only when u * sum lands within
// float rounding of a boundary between two tokens.
struct RowSample {
  int64_t id;
  float logprob;
};
RowSample sample_row(const float* logits, int64_t V, float temperature, double u, float* scratch);

// sample_row for `rows` rows of logits [rows, V] with uniforms u[rows] into out[rows] (scratch:
// rows x V floats): each row gets exactly what sample_row gives it. Faster than a row at a time:
// the running sums of kSampleLanes rows advance side by side in one vector (each lane still one
// sequential double sum, in index order), AVX-512 computes the exponentials 16 at a time (the
// same bits as AVX2's 8) and at temperature 1 the logits are not divided (x / 1 = x). Measured
// (scratch benchmark, 32 rows x 4,096, one thread): 138 -> 52 us sampled, 76 -> 45 us greedy.
constexpr int64_t kSampleLanes = 4;
void sample_rows(const float* logits, int64_t rows, int64_t V, float temperature, const double* u,
                 float* scratch, RowSample* out);

}  // namespace rlhf::policy::kernels

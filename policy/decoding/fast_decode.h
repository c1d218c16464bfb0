// The decoding step of Transformer on the CPU in float32, written against raw buffers: one new
// token per row through every layer and the output projection, with the hand-written kernels of
// policy/kernels/decode_kernels.h on preallocated buffers, the KV cache written in place, and
// attention over the filled prefix only. No libtorch operation and no allocation per layer.
//
// It computes what Transformer::hidden_states(ids [B, 1], ones, &cache) followed by
// logits_from_hidden computes (the definition, and what runs everywhere else: prefill, CUDA,
// bf16, training), up to float summation order: tests compare the two (policy_fast_decode_test),
// and generate() (policy/decoding/generation.h) takes this path whenever supports() says so.
//
// Why: at the bench's shapes (d = 256, batch 1..32) a step is a few hundred small operations, and
// libtorch's per-operation cost and OpenBLAS's packing of each weight dominated the multiplies
// (docs/performance.md, "Decoding engine").
//
// Thread safety: a DecodeEngine is used from one thread at a time (it owns its activation buffers
// and writes the KVCache it is bound to); its loops run on the LoopPool passed in, which may be
// shared. set_row_groups / row_groups_on may be called from any thread (an atomic).
// Ownership: the engine references the model's norm and embedding weights, `cache` and `pool`,
// which must outlive it; feed() returns a view of the engine's own logits buffer.
// Errors: feed() and step() check ids, mask and the cache's batch with TORCH_CHECK (c10::Error);
// the constructor throws rlhf::Error when the model lacks its rotary buffer.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "policy/kernels/decode_kernels.h"
#include "policy/kernels/loop_pool.h"
#include "policy/model/model.h"

namespace rlhf::policy {

class DecodeEngine {
 public:
  // Whether the engine can run `model` with `cache`: parameters float32 on the CPU, the fused
  // kernels switched on (fused::set_fused_kernels(false) turns this path off too, for A/B
  // measurements), and a cache that is either not started yet (length 0; dtype unset or float32:
  // feed() starts it) or started in float32, contiguous.
  static bool supports(Transformer& model, const KVCache& cache);

  // Binds to the model's current weights and to `cache`. The projection weights are copied into
  // the kernels' packed layout (one more copy of them while the engine lives); the norms and the
  // embedding are referenced: the weights must not change while the engine is used. Positions up
  // to max(max_seq_len, cache.capacity) run here; later ones, and a full cache, go through the
  // libtorch path (which grows the cache).
  DecodeEngine(Transformer& model, KVCache& cache, LoopPool& pool = shared_loop_pool());

  // Feeds ids [B, T] (int64, CPU) with mask [B, T] (1 = real token, 0 = pad; undefined = all
  // real) and extends the cache exactly as hidden_states(ids, mask, &cache) does, starting it for
  // B rows when its length is 0 (a prefill). Returns the logits [B, V] (float32) after each row's
  // last fed token: a view of the engine's buffer, overwritten by the next call.
  //
  // One difference from hidden_states, where it cannot matter: a pad query with no real token at
  // or before it in its row attends to nothing here (a zero context), where libtorch spreads it
  // over the masked keys. Its key and value are masked for every later query, so only the logits
  // of a row whose last fed token is such a pad differ.
  torch::Tensor feed(const torch::Tensor& ids, const torch::Tensor& mask = {});

  // feed(ids.view({B, 1})): one new real token per row, ids [B].
  torch::Tensor step(const torch::Tensor& ids);

  // Whether decoding steps of enough rows may run in row groups, one thread per group (see
  // row_groups() in fast_decode.cpp; the results are the same bits either way). On by default;
  // RLHF_DECODE_ROW_GROUPS=off (or 0) turns it off at start-up, for A/B runs and for machines where
  // streaming every weight on every thread costs more than the hand-offs it saves (measured on 2
  // threads only). Returns the previous setting.
  static bool set_row_groups(bool on);
  static bool row_groups_on();

 private:
  // A layer's norms (pointers into held_) and its projections packed for kernels::matmul_nt:
  // q, k and v as one weight (rows in that order), gate and up as one (pairs layout; rows, gate
  // then up, when the MLP has biases: they go in before SwiGLU). The optional parts of the other
  // families (null when absent): biases (q|k|v as one [(H + 2 KV) hd], o, gate, up, down) and the
  // per-head q/k RMSNorm weights [hd].
  struct LayerWeights {
    const float *input_norm, *post_norm;
    kernels::PackedWeight qkv, o, gate_up, down;
    const float *qkv_bias = nullptr, *o_bias = nullptr, *gate_bias = nullptr, *up_bias = nullptr,
                *down_bias = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  };
  // The rows of one feed() call: B x T tokens, row r = b * T + t.
  struct Batch {
    int64_t B, T;
    const int64_t* positions;   // [B, T]
    const int64_t* first_real;  // [B]: the first cache position of each row with a real token
  };
  static constexpr int64_t kMinRowsPerGroup = 8;  // see row_groups()
  const float* hold(const torch::Tensor& t);      // keeps t (contiguous) alive; its data
  void pack_weights();
  void hold_extras(DecoderLayerImpl& layer, LayerWeights* w);
  void prepare_head(const LayerWeights& w, float* row, int64_t j) const;
  void reserve_rows(int64_t rows);
  torch::Tensor plan_positions(const int64_t* id, const int64_t* mask, int64_t B, int64_t T);
  void load_tokens(const int64_t* id, const int64_t* mask, int64_t B, int64_t T);
  int64_t row_groups(int64_t B, int64_t T) const;
  void norm_rows(const float* weight, int64_t r0, int64_t r1);
  void attention_block(int64_t layer, const Batch& batch, int64_t b0, int64_t b1);
  void mlp_block(int64_t layer, int64_t r0, int64_t r1);
  void add_bias_rows(const float* bias, float* out, int64_t ld, int64_t n, int64_t r0, int64_t r1);
  void output_rows(int64_t r0, int64_t r1);
  torch::Tensor feed_through_libtorch(const torch::Tensor& ids, const torch::Tensor& mask);

  Transformer model_;
  KVCache& cache_;
  LoopPool& pool_;
  int64_t D_, H_, KV_, hd_, F_, V_;
  double eps_;
  int64_t sliding_window_;  // 0 = none; longer contexts are refused (ModelConfig)
  bool mlp_bias_;           // gate/up packed as rows, SwiGLU after the biases (gate_up_ buffer)
  std::vector<torch::Tensor> held_;  // the weights the pointers below point into
  torch::Tensor packed_;             // the storage of every PackedWeight below
  std::vector<LayerWeights> layers_;
  const float *embedding_, *final_norm_;
  kernels::PackedWeight lm_head_;
  torch::Tensor cos_, sin_;  // [positions, hd / 2] rotary tables, as hidden_states computes them
  // Activations for up to rows_ token rows: x [rows, D] (the residual stream), xn [rows, D],
  // qkv [rows, (H + 2 KV) hd], ctx [rows, H hd], act [rows, F]; scores [B * H, capacity];
  // logits [B, V].
  int64_t rows_ = 0;
  std::vector<int64_t> positions_, first_real_;  // of the current feed(): [B, T] and [B]
  std::vector<float> x_, xn_, qkv_, ctx_, act_, scores_;
  std::vector<float> gate_up_;  // [rows, 2F], only with mlp_bias_
  torch::Tensor logits_;
};

}  // namespace rlhf::policy

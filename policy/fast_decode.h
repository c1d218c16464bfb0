// The decoding step of Transformer on the CPU in float32, written against raw buffers: one new
// token per row through every layer and the output projection, with the hand-written kernels of
// policy/decode_kernels.h on preallocated buffers, the KV cache written in place, and attention
// over the filled prefix only. No libtorch operation and no allocation per layer.
//
// It computes what Transformer::hidden_states(ids [B, 1], ones, &cache) followed by
// logits_from_hidden computes (the definition, and what runs everywhere else: prefill, CUDA,
// bf16, training), up to float summation order: tests compare the two (policy_fast_decode_test),
// and generate() (policy/generation.h) takes this path whenever supports() says so.
//
// Why: at the bench's shapes (d = 256, batch 1..32) a step is a few hundred small operations, and
// libtorch's per-operation cost and OpenBLAS's packing of each weight dominated the multiplies
// (docs/performance.md, "Decoding engine").
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "common/loop_pool.h"
#include "policy/decode_kernels.h"
#include "policy/model.h"

namespace rlhf::policy {

class DecodeEngine {
 public:
  // Whether the engine can run `model` on `cache`: parameters float32 on the CPU, a float32 cache
  // already filled by a prefill (hidden_states with it), and the fused kernels switched on
  // (fused::set_fused_kernels(false) turns this path off too, for A/B measurements).
  static bool supports(Transformer& model, const KVCache& cache);

  // Binds to the model's current weights and to `cache`. B = the cache's batch. The projection
  // weights are copied into the kernels' packed layout (one more copy of them while the engine
  // lives); the norms and the embedding are referenced: the weights must not change while the
  // engine is used.
  DecodeEngine(Transformer& model, KVCache& cache, LoopPool& pool = shared_loop_pool());

  // Feeds ids [B] (int64, CPU) as one new real token per row, extends the cache exactly as
  // hidden_states(ids.view({B, 1}), ones, &cache) does, and returns the next-token logits [B, V]
  // (float32): a view of the engine's buffer, overwritten by the next step. A full cache is grown
  // through the libtorch path for that step.
  torch::Tensor step(const torch::Tensor& ids);

 private:
  // A layer's norms (pointers into held_) and its projections packed for kernels::matmul_nt:
  // q, k and v as one weight (rows in that order), gate and up as one.
  struct LayerWeights {
    const float *input_norm, *post_norm;
    kernels::PackedWeight qkv, o, gate_up, down;
  };
  void norm_rows(const float* weight);
  void attention_block(int64_t layer, const int64_t* positions);
  void mlp_block(int64_t layer);
  torch::Tensor step_through_libtorch(const torch::Tensor& ids);

  Transformer model_;
  KVCache& cache_;
  LoopPool& pool_;
  int64_t B_, D_, H_, KV_, hd_, F_, V_;
  double eps_;
  std::vector<torch::Tensor> held_;  // the weights the pointers below point into
  torch::Tensor packed_;             // the storage of every PackedWeight below
  std::vector<LayerWeights> layers_;
  const float *embedding_, *final_norm_;
  kernels::PackedWeight lm_head_;
  torch::Tensor cos_, sin_;  // [positions, hd / 2] rotary tables, as hidden_states computes them
  // Activations: x [B, D] (the residual stream), xn [B, D], qkv [B, (H + 2 KV) hd], ctx [B, H hd],
  // gate_up [B, 2 F] (gate then up), act [B, F], logits [B, V], scores [B * H, capacity].
  std::vector<float> x_, xn_, qkv_, ctx_, gate_up_, act_, scores_;
  torch::Tensor logits_;
};

}  // namespace rlhf::policy

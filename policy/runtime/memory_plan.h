// Memory plans: the bytes each part of a training stage will hold on its device, computed from the
// model's shape and the stage's settings before any weight is read (`rlhf sft|reward|ppo --plan`),
// and the check that refuses a run that cannot fit.
//
// The counts (docs/performance.md, "Memory plans", says how they compare with a measured peak):
//   weights     parameters x bytes per element: float32, or bfloat16 for frozen weights stored
//               so under dtype bf16: the projection matrices (and an untied lm_head) of a LoRA
//               base or a reference, the token embedding table of a LoRA base; norms, biases and
//               the value head float32;
//   fused cache the training ops' concatenated q/k/v and gate/up weights (fused::ConcatWeights), a
//               second copy of those matrices in the same dtype;
//   gradients   float32, one per trainable parameter;
//   optimizer   AdamW: two float32 moments per trainable parameter;
//   KV cache    2 x layers x batch x kv_heads x head_dim x (prompt + new tokens) x bytes (bfloat16
//               under dtype bf16, else float32);
//   activations an estimate for one training forward/backward over `tokens` = minibatch x sequence:
//               per layer and token 4 x dim + 2 x hidden elements saved for backward (2 bytes
//               under bf16 autocast, else 4) and heads x sequence float32 attention weights, plus
//               6 bytes x vocab per token for the float32 logits and the log-softmax's working
//               share. The coefficients are set from the measured peak of one PPO iteration of a
//               Qwen2.5-0.5B-shaped policy (docs/performance.md, "Memory that fits").
//
// This header and its source use no libtorch: the estimator is plain arithmetic (tested against
// hand-computed byte counts in tests/policy/memory_plan_test.cpp).
// Thread safety: the functions are pure, except available_memory(), which reads /proc/meminfo or
// asks the CUDA runtime; all may be called from any thread.
// Errors: check_plan_fits throws rlhf::Error with the whole table when the plan does not fit;
// ModelShape::validate throws rlhf::Error naming the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::policy {

// The sizes that set a decoder's memory (policy/model/model.h ModelConfig, without libtorch).
struct ModelShape {
  int64_t vocab = 0, dim = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, hidden = 0;
  bool tied = false, qkv_bias = false, o_bias = false, mlp_bias = false, qk_norm = false;
  bool value_head = false;

  void validate(const std::string& what) const;  // every size > 0
  // The projection matrices (q, k, v, o, gate, up, down) of all layers, in elements.
  int64_t matrix_params() const;
  // Everything else: embeddings, lm_head unless tied, norms, biases, q/k norms, value head.
  int64_t other_params() const;
  // Of those: the token embedding table (vocab x dim) and an untied lm_head (0 when tied).
  int64_t embedding_params() const { return vocab * dim; }
  int64_t lm_head_params() const { return tied ? 0 : vocab * dim; }
  // LoRA A and B (rank x (in + out) per target) over all layers; targets of q k v o gate up down.
  int64_t lora_params(int64_t rank, const std::vector<std::string>& targets) const;
  // q/k/v and gate/up matrices: what the fused training ops cache concatenated.
  int64_t fused_params() const;
};

struct PlanRow {
  std::string component;  // "policy", "reference", "critic", "reward model", ...
  std::string part;       // "weights", "fused cache", "gradients", "optimizer", "KV cache", ...
  int64_t bytes = 0;
  std::string note;  // how it was counted, e.g. "494.0M params fp32"
};

struct MemoryPlan {
  std::string stage, device, dtype;
  std::vector<PlanRow> rows;

  int64_t total() const;
  // One row per line (component, part, MiB, note) and a total line.
  std::string table() const;
  void add(const std::string& component, const std::string& part, int64_t bytes,
           const std::string& note = "");
};

// One model's resident parts: weights (matrices and an untied lm_head at matrix_bytes per element,
// the embedding table at embedding_bytes, the rest float32) and the fused cache (matrix_bytes);
// trainable parameters' gradients and AdamW state when trainable > 0.
struct ModelPart {
  std::string name;
  ModelShape shape;
  int matrix_bytes = 4;      // 2 for frozen bfloat16 matrices
  bool shared_base = false;  // weights held by another row (LoRA reference, shared-base critic)
  int64_t trainable = 0;     // trainable parameters (all, or LoRA's)
  int embedding_bytes = 4;   // 2 for a frozen bfloat16 embedding table (a LoRA base under bf16)
  std::string shared_with = "policy";  // the row holding the shared base (note text only)
};
void add_model(MemoryPlan& plan, const ModelPart& part);

// The KV cache of generation and the activation estimate of one training step (see above).
int64_t kv_cache_bytes(const ModelShape& s, int64_t batch, int64_t sequence, bool bf16);
// logits = false: a scalar head (reward model, critic), no [tokens, vocab] terms.
int64_t activation_bytes(const ModelShape& s, int64_t minibatch, int64_t sequence,
                         bool logits = true, bool bf16 = false);

// Bytes available on `device` ("cpu": /proc/meminfo MemAvailable; "cuda[:N]": the CUDA runtime's
// free device memory); -1 when it cannot be told (then nothing is refused).
int64_t available_memory(const std::string& device);

// Throws rlhf::Error "<stage>: the memory plan needs X MiB on <device>, Y MiB are available" with
// the table when plan.total() > available (available < 0: never).
void check_plan_fits(const MemoryPlan& plan, int64_t available);

}  // namespace rlhf::policy

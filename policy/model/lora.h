// LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on the
// projections of a Transformer: W' = W + (alpha / rank) * B A, A [rank, in], B [out, rank].
//
// How they attach: the model's projections are plain torch::nn::Linear layers, so the adapters
// re-parametrise them. refresh() sets each target Linear's `weight` member to the non-leaf tensor
// W + scale * B A (W is the registered, frozen parameter), so the unchanged model code computes
// W x + scale * B (A x) and autograd reaches A and B only. A is initialised like PEFT
// (Kaiming-uniform, a = sqrt(5)) and B with zeros, so a fresh adapter leaves the output unchanged.
//
// Dropout: the usual LoRA dropout acts on the adapter's input x, which this re-parametrisation
// cannot see; `dropout` here drops whole rank components of the update in training mode (each of
// the `rank` rows of A is kept with probability 1 - p and scaled by 1 / (1 - p)), which like input
// dropout regularises only the adapter path and is the identity in eval mode.
//
// A base whose projections are bfloat16 (LoadOptions::matrix_dtype, policy/model/checkpoint.h)
// keeps them so: A and B are float32 whatever the base, refresh() rounds scale * B A to the base's
// dtype before adding it (the effective weight is bfloat16), and merge() widens each target base to
// float32 before folding the update in (a small update would round away in bfloat16).
//
// Not thread-safe. The model must stay on one device while adapters are attached.
// Ownership: LoraAdapters shares the model (a libtorch handle) and rewrites its projections'
// `weight` members until merge() or destruction, which restores plain weights.
// Errors: rlhf::Error naming the field (validate, the constructor), or the file and tensor
// (save, load, read_options).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "policy/model/model.h"

namespace rlhf::proto {
class LoraConfig;
}

namespace rlhf::policy {

struct LoraOptions {
  int rank = 8;                                   // > 0
  float alpha = 0.0f;                             // scale = alpha / rank; 0 means alpha = rank
  float dropout = 0.0f;                           // rank dropout in [0, 1) (see above)
  std::vector<std::string> targets = {"q", "v"};  // of q, k, v, o, gate, up, down

  float scale() const { return (alpha > 0 ? alpha : static_cast<float>(rank)) / rank; }
  // Throws rlhf::Error naming the field on a bad rank/dropout/target.
  void validate() const;
  static LoraOptions from_proto(const proto::LoraConfig& p);  // unset fields keep defaults
};

class LoraAdapters {
 public:
  // Freezes every parameter of `model` (requires_grad = false), creates the adapters (seeded by the
  // torch generator) and applies them (refresh(false)).
  LoraAdapters(Transformer model, const LoraOptions& options);
  ~LoraAdapters();
  LoraAdapters(const LoraAdapters&) = delete;
  LoraAdapters& operator=(const LoraAdapters&) = delete;

  // Recomputes the effective weights from the current A, B. Call before every forward pass whose
  // graph you back-propagate (each step builds a fresh graph), and after changing A/B by hand.
  // training = true draws a new rank-dropout mask.
  void refresh(bool training);

  // Switches the adapters off: each target projection computes with its plain base weight (the
  // registered, frozen parameter) until the next refresh(). With a frozen base this is the model
  // the adapters started from, so PPO's reference is the policy with its adapters off (no second
  // copy of the base weights).
  void disable();

  // The adapter parameters (A and B of every target), in a fixed order: what the optimiser gets.
  std::vector<torch::Tensor> parameters() const;
  // PEFT names: "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight", ...
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;

  // Writes <dir>/adapter_model.safetensors + <dir>/adapter_config.json (PEFT layout), adapters
  // only. Loading checks rank/targets/shapes and throws naming the file and tensor.
  void save(const std::string& dir) const;
  void load(const std::string& dir);
  // Reads <dir>/adapter_config.json into options (to construct a matching LoraAdapters).
  static LoraOptions read_options(const std::string& dir);

  // Folds scale * B A into the base weights in place and restores plain Linear weights; the
  // adapters are then detached (the object is empty afterwards). The model's output is unchanged
  // up to float rounding and it can be saved as a plain checkpoint (native or Hugging Face).
  void merge();

  const LoraOptions& options() const { return options_; }
  int64_t num_parameters() const;

 private:
  struct Slot {
    std::string name;  // PEFT prefix, e.g. "base_model.model.model.layers.0.self_attn.q_proj"
    torch::nn::Linear linear{nullptr};  // the wrapped projection
    torch::Tensor base;                 // its registered weight [out, in] (frozen)
    torch::Tensor a, b;                 // [rank, in], [out, rank] (trainable)
  };
  void detach_all();

  Transformer model_;
  LoraOptions options_;
  std::vector<Slot> slots_;
};

}  // namespace rlhf::policy

// Per-token log-probabilities and entropy under teacher forcing.
//
// Thread safety: token_logprobs runs forward passes of `model`, which is not thread-safe
// (policy/model/model.h): one call per model at a time. Errors: shapes are checked with
// TORCH_CHECK (c10::Error naming the argument), e.g. ids shorter than 2 tokens or values
// requested from a model without a value head.
#pragma once

#include <torch/torch.h>

#include "policy/model/model.h"

namespace rlhf::policy {

struct TokenLogprobs {
  torch::Tensor logprobs;  // [B, T-1]: log p(ids[:, t+1] | ids[:, :t+1]) at temperature
  torch::Tensor entropy;   // [B, T-1]: entropy of that distribution (empty if not requested)
  torch::Tensor values;    // [B, T-1]: value head at position t (empty unless requested)
  torch::Tensor hidden;    // [B, T, D] final hidden states (kept only when requested)
};

struct LogprobOptions {
  float temperature = 1.0f;  // logits are divided by it (as during sampling); 0 is treated as 1
  bool entropy = false;
  bool values = false;  // requires a value head
  bool keep_hidden = false;
  int64_t chunk = 64;  // time steps per logits chunk: [B, chunk, V] is the largest buffer
};

// ids [B, T] int64, attention_mask [B, T]. Gradients flow when grad mode is on; then each chunk's
// logits are recomputed in the backward pass instead of being kept, so neither direction holds
// more than one [B, chunk, V] buffer. The output matrix used is lm_head (or the tied embeddings).
TokenLogprobs token_logprobs(Transformer& model, const torch::Tensor& ids,
                             const torch::Tensor& attention_mask,
                             const LogprobOptions& options = {});

}  // namespace rlhf::policy

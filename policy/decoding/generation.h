// Batched sampling with a KV cache.
//
// Thread safety: generate() runs forward passes of `model`, which is not thread-safe
// (policy/model/model.h): one generate() per model at a time. Calls on different models may run
// at once. Errors: rlhf::Error for bad options or prompts (see generate()); c10::Error from
// libtorch (e.g. out of memory on the device).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "policy/model/model.h"
#include "policy/runtime/device.h"

namespace rlhf::policy {

struct SamplingOptions {
  int max_new_tokens = 64;
  float temperature = 1.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off (nucleus sampling)
  uint64_t seed = 0;         // the same seed and prompts give the same samples on CPU
  int eos_id = -2;           // -2 = model config's eos_id; -1 = never stop at EOS
  // More ids that end a sequence as EOS does (kept in the response, like EOS), e.g. a chat
  // template's end-of-turn token (policy/tokenizer/chat_stop.h). Empty = none.
  std::vector<int64_t> stop_ids;
  bool use_cache = true;  // false recomputes the whole prefix every step (for tests/bench)
  // Data parallelism: these prompts are rows [row_offset, row_offset + B) of a global batch of
  // total_rows (0 = B). Each step draws the whole batch's random numbers and uses its own rows, so
  // a row's sample does not depend on how the batch is split across ranks.
  int64_t row_offset = 0;
  int64_t total_rows = 0;
  // kBf16: the forward passes run under bf16 autocast and the KV cache is bfloat16
  // (policy/runtime/device.h); log-probabilities are still float32.
  Precision precision = Precision::kFp32;
};

struct GenerationOutput {
  // Prompts left-padded to P = longest prompt: [B, P] ids and mask (1 = real).
  torch::Tensor prompt_ids, prompt_mask;
  // Generated tokens [B, N] (N <= max_new_tokens). After a sequence's EOS (or stop id) the rest
  // is pad_id.
  torch::Tensor response_ids;
  // [B, N] log p of each generated token under the sampling distribution (logits / temperature;
  // temperature 0 uses 1), before top-k/top-p filtering; 0 at masked positions.
  torch::Tensor response_logprobs;
  // [B, N] 1 for real generated tokens (including the EOS), 0 after it.
  torch::Tensor response_mask;
  // Convenience: per-sequence generated ids, without padding (EOS included when produced).
  std::vector<std::vector<int64_t>> responses;
  double seconds = 0;  // wall time of the generation
  int64_t generated_tokens = 0;
};

// Generates continuations for a batch of prompts (ids, BOS included by the caller if wanted).
// Runs under inference mode; the model's training flag is left unchanged. Throws rlhf::Error
// naming the problem for no prompts, an empty prompt, an id outside the vocabulary, a prompt plus
// max_new_tokens longer than max_seq_len, a temperature < 0, a top_p outside (0, 1] or rows
// outside total_rows.
GenerationOutput generate(Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                          const SamplingOptions& options);

}  // namespace rlhf::policy

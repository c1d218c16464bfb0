// Small random models for the policy tests.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "policy/model/model.h"

namespace rlhf::policy::testing {

// The smallest model the policy tests use: vocab 64, d 32, 2 layers, 4 heads over 2 kv heads
// (grouped-query: the k/v projections are narrower than q).
inline ModelConfig tiny_config(int64_t max_seq_len) {
  ModelConfig c;
  c.vocab_size = 64;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.max_seq_len = max_seq_len;
  return c;
}

// A model of config `c` with random weights (seeded) that give O(1) activations and logits, so
// greedy choices are not near-ties: embeddings N(0, 1), matrices N(0, 1 / fan_in), norm weights
// uniform in [0.8, 1.2] (not all ones, so they are exercised).
inline Transformer random_model(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  Transformer m(c);
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters()) {
    auto& t = p.value();
    if (t.dim() == 1) {
      t.uniform_(0.8, 1.2);
    } else if (p.key().find("embed_tokens") != std::string::npos) {
      t.normal_(0.0, 1.0);
    } else {
      t.normal_(0.0, 1.0 / std::sqrt(double(t.size(1))));
    }
  }
  return m;
}

}  // namespace rlhf::policy::testing

#include "policy/logprobs.h"

#include <algorithm>
#include <vector>

namespace rlhf::policy {

TokenLogprobs token_logprobs(Transformer& model, const torch::Tensor& ids,
                             const torch::Tensor& attention_mask, const LogprobOptions& options) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(1) >= 2, "token_logprobs: ids must be [B, T] with T >= 2, got ",
              ids.sizes());
  const int64_t T = ids.size(1);
  const double temperature = options.temperature > 0 ? options.temperature : 1.0;
  const int64_t chunk = std::max<int64_t>(1, options.chunk);

  TokenLogprobs out;
  auto hidden = model->hidden_states(ids, attention_mask);  // [B, T, D]
  auto targets = ids.narrow(1, 1, T - 1);                   // [B, T-1]

  // The [B, chunk, V] logits of one chunk are the largest buffer (under no-grad; with autograd
  // each chunk's log-softmax is kept for the backward pass).
  std::vector<torch::Tensor> lps, ents;
  for (int64_t t0 = 0; t0 < T - 1; t0 += chunk) {
    int64_t n = std::min(chunk, T - 1 - t0);
    auto logits = model->logits_from_hidden(hidden.narrow(1, t0, n));
    if (temperature != 1.0) logits = logits / temperature;
    auto logp = torch::log_softmax(logits, -1);  // [B, n, V]
    lps.push_back(logp.gather(-1, targets.narrow(1, t0, n).unsqueeze(-1)).squeeze(-1));
    if (options.entropy) ents.push_back(-(logp.exp() * logp).sum(-1));
  }
  out.logprobs = lps.size() == 1 ? lps[0] : torch::cat(lps, 1);
  if (options.entropy) out.entropy = ents.size() == 1 ? ents[0] : torch::cat(ents, 1);
  if (options.values) out.values = model->values_from_hidden(hidden.narrow(1, 0, T - 1));
  if (options.keep_hidden) out.hidden = hidden;
  return out;
}

}  // namespace rlhf::policy

#include "policy/model/logprobs.h"

#include <algorithm>
#include <vector>

#include "policy/model/fused_ops.h"

namespace rlhf::policy {

namespace {

// log p(target) and entropy for one time chunk, with a backward pass that recomputes the
// [B, n, V] logits instead of keeping them: with autograd on, only the hidden chunk (a view) and
// the output matrix are saved, so memory stays O(B * chunk * V) for the whole sequence.
// Inputs: hidden [B, n, D], weight [V, D] (lm_head or tied embeddings), targets [B, n].
class ChunkLogprobs : public torch::autograd::Function<ChunkLogprobs> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& hidden,
                                                const torch::Tensor& weight,
                                                const torch::Tensor& targets, double temperature) {
    torch::NoGradGuard no_grad;
    auto st = fused::token_logprob_stats(logits(hidden, weight, temperature), targets, true);
    // The per-row log-sum-exp and entropy ([B, n]) let backward skip the row reductions.
    ctx->save_for_backward({hidden, weight, targets, st.logsumexp, st.entropy});
    ctx->saved_data["temperature"] = temperature;
    return {st.logprobs, st.entropy};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &weight = saved[1], &targets = saved[2];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    torch::NoGradGuard no_grad;
    fused::TokenLogprobStats st;
    st.logsumexp = saved[3];
    st.entropy = saved[4];
    // d lp / dz = onehot - p;  d H / dz = -p * (log p + H)   (z = logits / temperature), written
    // over the recomputed [B, n, V] logits.
    auto g = fused::token_logprobs_backward(logits(hidden, weight, temperature), targets, st,
                                            grads[0], grads[1], /*in_place=*/true);
    if (temperature != 1.0) g.div_(temperature);
    if (weight.scalar_type() != hidden.scalar_type() && !ctx->needs_input_grad(1))
      return {ctx->needs_input_grad(0) ? sliced_grad_hidden(g, weight) : torch::Tensor(),
              torch::Tensor(), torch::Tensor(), torch::Tensor()};
    auto g_w = g.to(weight.scalar_type());
    torch::Tensor grad_hidden, grad_weight;
    if (ctx->needs_input_grad(0))
      grad_hidden = torch::matmul(g_w, weight).to(hidden.scalar_type());  // [B, n, D]
    if (ctx->needs_input_grad(1))
      grad_weight = torch::matmul(g_w.reshape({-1, g_w.size(-1)}).t(),
                                  hidden.reshape({-1, hidden.size(-1)}));  // [V, D]
    return {grad_hidden, grad_weight, torch::Tensor(), torch::Tensor()};
  }

 private:
  // Vocabulary rows per product when the output matrix is bfloat16 (see mixed_logits).
  static constexpr int64_t kVocabSlice = 16384;

  static torch::Tensor logits(const torch::Tensor& hidden, const torch::Tensor& weight,
                              double temperature) {
    torch::Tensor z;
    if (hidden.scalar_type() == weight.scalar_type()) {
      z = torch::matmul(hidden, weight.t());
      if (z.scalar_type() != torch::kFloat) z = z.to(torch::kFloat);
    } else {
      z = mixed_logits(hidden, weight);
    }
    return temperature == 1.0 ? z : z / temperature;
  }

  // A bfloat16 output matrix (a frozen base, LoadOptions) meets the hidden states in its dtype, as
  // autocast does in forward (backward runs outside autocast, which would refuse mixed dtypes),
  // kVocabSlice rows at a time into the float32 logits: no [B, n, V] bfloat16 buffer beside them.
  static torch::Tensor mixed_logits(const torch::Tensor& hidden, const torch::Tensor& weight) {
    const auto h = hidden.to(weight.scalar_type());
    auto sizes = hidden.sizes().vec();
    const int64_t V = weight.size(0);
    sizes.back() = V;
    auto z = torch::empty(sizes, hidden.options().dtype(torch::kFloat));
    for (int64_t v0 = 0; v0 < V; v0 += kVocabSlice) {
      const int64_t n = std::min(kVocabSlice, V - v0);
      z.narrow(-1, v0, n).copy_(torch::matmul(h, weight.narrow(0, v0, n).t()));
    }
    return z;
  }

  // d hidden = g @ weight for a bfloat16 weight, slice by slice (each slice of g rounded to
  // bfloat16 as autocast would, the float32 sum over slices): no [B, n, V] bfloat16 copy of g.
  static torch::Tensor sliced_grad_hidden(const torch::Tensor& g, const torch::Tensor& weight) {
    const int64_t V = weight.size(0);
    auto sizes = g.sizes().vec();
    sizes.back() = weight.size(1);
    auto out = torch::zeros(sizes, g.options().dtype(torch::kFloat));
    for (int64_t v0 = 0; v0 < V; v0 += kVocabSlice) {
      const int64_t n = std::min(kVocabSlice, V - v0);
      out.add_(
          torch::matmul(g.narrow(-1, v0, n).to(weight.scalar_type()), weight.narrow(0, v0, n)));
    }
    return out;
  }
};

}  // namespace

TokenLogprobs token_logprobs(Transformer& model, const torch::Tensor& ids,
                             const torch::Tensor& attention_mask, const LogprobOptions& options) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(1) >= 2,
              "token_logprobs: ids must be [B, T] with T >= 2, got ", ids.sizes());
  const int64_t T = ids.size(1);
  const double temperature = options.temperature > 0 ? options.temperature : 1.0;
  const int64_t chunk = std::max<int64_t>(1, options.chunk);

  TokenLogprobs out;
  auto hidden = model->hidden_states(ids, attention_mask);  // [B, T, D]
  auto targets = ids.narrow(1, 1, T - 1);                   // [B, T-1]
  const auto& weight = model->lm_head ? model->lm_head->weight : model->tok_embeddings->weight;
  const bool recompute =
      torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());

  std::vector<torch::Tensor> lps, ents;
  for (int64_t t0 = 0; t0 < T - 1; t0 += chunk) {
    int64_t n = std::min(chunk, T - 1 - t0);
    auto h = hidden.narrow(1, t0, n);
    auto tgt = targets.narrow(1, t0, n);
    if (recompute) {
      // Autograd: logits are recomputed in backward (see ChunkLogprobs).
      auto r = ChunkLogprobs::apply(h, weight, tgt, temperature);
      lps.push_back(r[0]);
      if (options.entropy) ents.push_back(r[1]);
      continue;
    }
    // No autograd: the [B, chunk, V] logits of one chunk are the largest buffer.
    auto logits = model->logits_from_hidden(h);
    if (temperature != 1.0) logits = logits / temperature;
    auto st = fused::token_logprob_stats(logits, tgt, options.entropy);
    lps.push_back(st.logprobs);
    if (options.entropy) ents.push_back(st.entropy);
  }
  out.logprobs = lps.size() == 1 ? lps[0] : torch::cat(lps, 1);
  if (options.entropy) out.entropy = ents.size() == 1 ? ents[0] : torch::cat(ents, 1);
  if (options.values) out.values = model->values_from_hidden(hidden.narrow(1, 0, T - 1));
  if (options.keep_hidden) out.hidden = hidden;
  return out;
}

}  // namespace rlhf::policy

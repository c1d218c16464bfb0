#include "policy/decoding/generation.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "policy/decoding/fast_decode.h"
#include "policy/kernels/decode_kernels.h"
#include "policy/model/fused_ops.h"

namespace rlhf::policy {

namespace {

// Nucleus threshold (Holtzman et al. 2019): the smallest set of most likely tokens whose mass
// reaches top_p is kept (always at least one token). Returns [B, 1] probabilities: a token is kept
// when its probability is >= the row's threshold. probs [B, V], rows sum to 1.
torch::Tensor top_p_threshold(const torch::Tensor& probs, double top_p) {
  // Most rows concentrate their nucleus in a few tokens: try the top 64 before a full sort.
  const int64_t V = probs.size(-1);
  for (int64_t k : {std::min<int64_t>(64, V), V}) {
    auto top =
        k == V ? std::get<0>(probs.sort(-1, /*descending=*/true)) : std::get<0>(probs.topk(k, -1));
    auto mass_before = top.cumsum(-1) - top;
    // Number of kept tokens = count of positions whose preceding mass is still below top_p.
    auto kept = (mass_before < top_p).sum(-1, /*keepdim=*/true).clamp_min(1);  // [B, 1]
    bool complete = k == V || (kept < k).all().item<bool>();
    if (complete) return top.gather(-1, kept - 1);
  }
  return {};  // unreachable
}

// Samples one id per row from unnormalised non-negative weights [B, V] by inverting the CDF with
// one uniform number per row from `gen` (CPU): cheap, and reproducible for a seed.
// The uniforms are drawn for all total_rows rows of the global batch; these weights are rows
// [row_offset, row_offset + B) of it.
torch::Tensor sample_rows(const torch::Tensor& weights, at::Generator& gen, int64_t row_offset,
                          int64_t total_rows) {
  auto w = weights.to(torch::kCPU, torch::kDouble);
  auto cdf = w.cumsum(-1);
  auto total = cdf.narrow(-1, cdf.size(-1) - 1, 1);
  auto u = torch::rand({total_rows, 1}, gen, torch::TensorOptions().dtype(torch::kDouble))
               .narrow(0, row_offset, w.size(0)) *
           total;
  // First index whose cumulative weight exceeds u (zero-weight tokens are never chosen).
  auto idx = torch::searchsorted(cdf, u, /*out_int32=*/false, /*right=*/true).squeeze(-1);
  return idx.clamp_max(w.size(-1) - 1);
}

// Checks the options and prompts; returns the longest prompt's length P.
int64_t check_request(const ModelConfig& cfg, const std::vector<std::vector<int64_t>>& prompts,
                      const SamplingOptions& options) {
  if (prompts.empty()) throw Error("generate: no prompts");
  if (options.max_new_tokens < 0)
    throw Error("generate: max_new_tokens = " + std::to_string(options.max_new_tokens) +
                ", expected >= 0");
  if (options.temperature < 0) throw Error("generate: temperature must be >= 0");
  if (!(options.top_p > 0 && options.top_p <= 1))
    throw Error("generate: top_p = " + std::to_string(options.top_p) + ", expected in (0, 1]");
  const int64_t B = prompts.size();
  const int64_t total_rows = options.total_rows > 0 ? options.total_rows : B;
  if (options.row_offset < 0 || options.row_offset + B > total_rows)
    throw Error("generate: rows " + std::to_string(options.row_offset) + ".." +
                std::to_string(options.row_offset + B) + " do not fit a batch of " +
                std::to_string(total_rows));
  int64_t P = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw Error("generate: prompt " + std::to_string(i) + " is empty");
    for (auto id : prompts[i])
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("generate: prompt " + std::to_string(i) + " has id " + std::to_string(id) +
                    ", expected 0 <= id < vocab_size = " + std::to_string(cfg.vocab_size));
    P = std::max<int64_t>(P, prompts[i].size());
  }
  if (P + options.max_new_tokens > cfg.max_seq_len)
    throw Error("generate: prompt length " + std::to_string(P) + " + max_new_tokens " +
                std::to_string(options.max_new_tokens) + " exceeds max_seq_len " +
                std::to_string(cfg.max_seq_len) +
                (cfg.sliding_window > 0 ? " (capped at the sliding window; a longer context is "
                                          "not supported)"
                                        : ""));
  return P;
}

// Prompts left-padded to P: [B, P] ids and mask (1 = real).
std::pair<torch::Tensor, torch::Tensor> left_padded(
    const std::vector<std::vector<int64_t>>& prompts, int64_t P, int64_t pad) {
  const int64_t B = prompts.size();
  auto ids = torch::full({B, P}, pad, torch::kLong);
  auto mask = torch::zeros({B, P}, torch::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = P - int64_t(prompts[b].size());
    for (size_t t = 0; t < prompts[b].size(); ++t) {
      ids_a[b][off + t] = prompts[b][t];
      mask_a[b][off + t] = 1;
    }
  }
  return {ids, mask};
}

// The next token of every row from the step's logits (already divided by the temperature) and
// log-probs: argmax when greedy, else top-k, top-p, then one draw per row (sample_rows).
torch::Tensor choose_next(const torch::Tensor& logits, const torch::Tensor& logp,
                          const SamplingOptions& options, int64_t vocab_size, at::Generator& gen,
                          int64_t total_rows) {
  if (options.temperature == 0) return logits.argmax(-1);
  auto probs = logp.exp();
  // Top-k then top-p, both as a per-row probability threshold (ties at it are kept).
  if (options.top_k > 0 && options.top_k < vocab_size) {
    auto threshold = std::get<0>(probs.topk(options.top_k, -1)).narrow(-1, options.top_k - 1, 1);
    probs = probs.masked_fill(probs < threshold, 0.0);
    probs = probs / probs.sum(-1, true);
  }
  if (options.top_p < 1.0f)
    probs = probs.masked_fill(probs < top_p_threshold(probs, options.top_p), 0.0);
  // Sampled on the CPU with our own generator: the same seed gives the same samples.
  return sample_rows(probs, gen, options.row_offset, total_rows).to(logits.device());
}

// Whether choose_next reduces to plain softmax sampling or argmax (no top-k / top-p filter), which
// sample_plain computes in one pass per row.
bool plain_sampling(const torch::Tensor& logits, const SamplingOptions& o, int64_t vocab_size) {
  return fused::has_fused_kernel(logits) && logits.scalar_type() == torch::kFloat &&
         (o.temperature == 0 || ((o.top_k <= 0 || o.top_k >= vocab_size) && o.top_p >= 1.0f));
}

// choose_next and the log-prob gather for plain sampling, on the CPU, kernels::kSampleLanes rows
// per chunk of the loop pool (kernels::sample_rows). Draws the same uniforms from `gen` as
// sample_rows, so the generator advances alike on both paths. scratch: the caller's buffer, resized
// to B x V once. Returns next ids [B] and their log-probs [B].
std::pair<torch::Tensor, torch::Tensor> sample_plain(const torch::Tensor& logits,
                                                     const SamplingOptions& o, at::Generator& gen,
                                                     int64_t total_rows, double temperature,
                                                     std::vector<float>& scratch) {
  const int64_t B = logits.size(0), V = logits.size(1);
  auto x = logits.contiguous();
  auto u = o.temperature == 0
               ? torch::full({B}, -1.0, torch::kDouble)  // greedy
               : torch::rand({total_rows, 1}, gen, torch::TensorOptions().dtype(torch::kDouble))
                     .narrow(0, o.row_offset, B)
                     .contiguous();
  auto next = torch::empty({B}, torch::kLong);
  auto lp = torch::empty({B}, torch::kFloat);
  scratch.resize(B * V);
  const float* xs = x.data_ptr<float>();
  const double* us = u.data_ptr<double>();
  int64_t* ids = next.data_ptr<int64_t>();
  float* lps = lp.data_ptr<float>();
  const int64_t lanes = kernels::kSampleLanes;
  shared_loop_pool().parallel_for((B + lanes - 1) / lanes, [&](int64_t chunk) {
    const int64_t b = chunk * lanes, n = std::min(lanes, B - b);
    kernels::RowSample drawn[kernels::kSampleLanes];
    kernels::sample_rows(xs + b * V, n, V, float(temperature), us + b, scratch.data() + b * V,
                         drawn);
    for (int64_t i = 0; i < n; ++i) {
      ids[b + i] = drawn[i].id;
      lps[b + i] = drawn[i].logprob;
    }
  });
  return {next, lp};
}

// What the sampling loop produced for each row, step by step: the token (pad_id after the row's
// EOS), its log-prob (0 after it) and the alive mask (1 up to and including the EOS). On the CPU
// plain loops over [B, N] buffers (the tensor ops they replace cost ~30 us per step, 2% of a
// batch-32 step and ~10% of a batch-1 one); elsewhere tensor ops on the device, stacked at the end.
class Responses {
 public:
  // stops: the ids that end a row (EOS and the stop ids; empty = never stop).
  Responses(int64_t B, int64_t N, int64_t pad, std::vector<int64_t> stops,
            const torch::Device& device)
      : B_(B), N_(N), pad_(pad), stops_(std::move(stops)), cpu_(device.is_cpu()) {
    if (cpu_) {
      ids_ = torch::empty({B, N}, torch::kLong);
      logprobs_ = torch::empty({B, N}, torch::kFloat);
      mask_ = torch::empty({B, N}, torch::kLong);
      finished_.assign(B, 0);
    } else {
      finished_t_ = torch::zeros({B}, torch::TensorOptions().dtype(torch::kBool).device(device));
    }
  }

  // Records one step: next [B] (the draws; on the CPU its finished rows are overwritten with pad
  // in place) and their log-probs lp [B]. Returns the ids to feed the model next. *all_done: every
  // row has produced its EOS.
  torch::Tensor record(torch::Tensor next, const torch::Tensor& lp, bool* all_done) {
    *all_done = false;
    if (!cpu_) {
      auto alive = finished_t_.logical_not();
      next = next.masked_fill(finished_t_, pad_);
      tokens_.push_back(next);
      logprob_steps_.push_back(lp.masked_fill(finished_t_, 0.0));
      masks_.push_back(alive.to(torch::kLong));
      if (!stops_.empty()) {
        for (int64_t s : stops_) finished_t_ = finished_t_.logical_or(next == s);
        *all_done = finished_t_.all().item<bool>();
      }
      ++steps_;
      return next;
    }
    TORCH_CHECK(next.scalar_type() == torch::kLong && next.is_contiguous() && next.numel() == B_,
                "generate: sampled ids must be a contiguous int64 [", B_, "], got ", next.sizes());
    auto lp_f = lp.to(torch::kFloat).contiguous();
    int64_t* n = next.data_ptr<int64_t>();
    const float* l = lp_f.data_ptr<float>();
    int64_t *ids = ids_.data_ptr<int64_t>(), *mask = mask_.data_ptr<int64_t>();
    float* lps = logprobs_.data_ptr<float>();
    bool all = true;
    for (int64_t b = 0; b < B_; ++b) {
      const int64_t at = b * N_ + steps_;
      const bool alive = !finished_[b];
      if (!alive) n[b] = pad_;
      ids[at] = n[b];
      lps[at] = alive ? l[b] : 0.0f;
      mask[at] = alive;
      if (alive && is_stop(n[b])) finished_[b] = 1;
      all = all && finished_[b];
    }
    *all_done = !stops_.empty() && all;
    ++steps_;
    return next;
  }

  // response_ids, response_logprobs and response_mask [B, steps] (cloned: call this outside
  // inference mode, callers may feed them into autograd, e.g. PPO), the unpadded responses and
  // the generated-token count.
  void assemble(GenerationOutput& out) const {
    if (cpu_) {
      out.response_ids = ids_.narrow(1, 0, steps_).clone();
      out.response_logprobs = logprobs_.narrow(1, 0, steps_).clone();
      out.response_mask = mask_.narrow(1, 0, steps_).clone();
    } else if (steps_ == 0) {
      out.response_ids = torch::zeros({B_, 0}, torch::kLong);
      out.response_logprobs = torch::zeros({B_, 0}, torch::kFloat);
      out.response_mask = torch::zeros({B_, 0}, torch::kLong);
    } else {
      out.response_ids = torch::stack(tokens_, 1).to(torch::kCPU).clone();
      out.response_logprobs = torch::stack(logprob_steps_, 1).to(torch::kCPU).clone();
      out.response_mask = torch::stack(masks_, 1).to(torch::kCPU).clone();
    }
    out.responses.resize(B_);
    auto ids_a = out.response_ids.accessor<int64_t, 2>();
    auto mask_a = out.response_mask.accessor<int64_t, 2>();
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t t = 0; t < out.response_ids.size(1); ++t)
        if (mask_a[b][t]) out.responses[b].push_back(ids_a[b][t]);
    out.generated_tokens = out.response_mask.sum().item<int64_t>();
  }

 private:
  bool is_stop(int64_t id) const {
    for (int64_t s : stops_)
      if (id == s) return true;
    return false;
  }

  int64_t B_, N_, pad_;
  std::vector<int64_t> stops_;
  bool cpu_;
  int64_t steps_ = 0;
  torch::Tensor ids_, logprobs_, mask_;                        // CPU: [B, N]
  std::vector<char> finished_;                                 // CPU: per row
  torch::Tensor finished_t_;                                   // elsewhere: [B] bool on the device
  std::vector<torch::Tensor> tokens_, logprob_steps_, masks_;  // elsewhere: per step
};

// The model side of the sampling loop: the logits after the prompt, then after each fed token,
// through the decoding engine (CPU float32 with the cache; policy/decoding/fast_decode.h), the
// libtorch layers with the KV cache, or (use_cache = false) the whole sequence again.
class NextLogits {
 public:
  NextLogits(Transformer& model, const torch::Tensor& ids, const torch::Tensor& mask,
             const SamplingOptions& o, int64_t capacity)
      : model_(model), use_cache_(o.use_cache), seq_(ids), seq_mask_(mask) {
    cache_.capacity = capacity;
    if (o.precision == Precision::kBf16) cache_.dtype = torch::kBFloat16;
    if (use_cache_ && DecodeEngine::supports(model, cache_)) {  // the prompt through the engine too
      engine_.emplace(model, cache_);
      first_ = engine_->feed(ids, mask).clone();
    } else {
      auto hidden =
          use_cache_ ? model->hidden_states(ids, mask, &cache_) : model->hidden_states(ids, mask);
      first_ = model->logits_from_hidden(hidden.select(1, hidden.size(1) - 1));
    }
    ones_col_ = torch::ones({ids.size(0), 1}, mask.options().dtype(torch::kLong));
  }

  // Logits [B, V] for the next token after the prompt.
  torch::Tensor first() const { return first_; }

  // Feeds next [B] and returns the logits after it. The engine's are a view of its buffer,
  // overwritten by the following call.
  torch::Tensor after(const torch::Tensor& next) {
    if (engine_) return engine_->step(next);
    auto next_col = next.unsqueeze(1);
    torch::Tensor hidden;
    if (use_cache_) {
      hidden = model_->hidden_states(next_col, ones_col_, &cache_);
    } else {
      seq_ = torch::cat({seq_, next_col}, 1);
      seq_mask_ = torch::cat({seq_mask_, ones_col_}, 1);
      hidden = model_->hidden_states(seq_, seq_mask_);
    }
    return model_->logits_from_hidden(hidden.select(1, hidden.size(1) - 1));
  }

 private:
  Transformer model_;
  bool use_cache_;
  KVCache cache_;
  std::optional<DecodeEngine> engine_;
  torch::Tensor seq_, seq_mask_, ones_col_, first_;
};

// One sampling step: next ids [B] and their log-probs [B] under logits / temperature.
std::pair<torch::Tensor, torch::Tensor> sample_step(torch::Tensor logits, const SamplingOptions& o,
                                                    int64_t vocab_size, at::Generator& gen,
                                                    int64_t total_rows, double temperature,
                                                    std::vector<float>& scratch) {
  if (plain_sampling(logits, o, vocab_size))
    return sample_plain(logits, o, gen, total_rows, temperature, scratch);
  if (temperature != 1.0) logits = logits / temperature;
  auto logp = torch::log_softmax(logits, -1);
  auto next = choose_next(logits, logp, o, vocab_size, gen, total_rows);
  return {next, logp.gather(-1, next.unsqueeze(-1)).squeeze(-1)};
}

}  // namespace

GenerationOutput generate(Transformer& model, const std::vector<std::vector<int64_t>>& prompts,
                          const SamplingOptions& options) {
  const auto& cfg = model->config();
  const int64_t P = check_request(cfg, prompts, options);
  const int64_t B = prompts.size(), N = options.max_new_tokens;
  const int64_t total_rows = options.total_rows > 0 ? options.total_rows : B;
  const int64_t eos = options.eos_id == -2 ? cfg.eos_id : options.eos_id;
  const int64_t pad = cfg.pad_id >= 0 ? cfg.pad_id : 0;
  const double temperature = options.temperature == 0 ? 1.0 : options.temperature;
  const auto device = model->tok_embeddings->weight.device();
  auto t_start = std::chrono::steady_clock::now();
  auto [prompt_ids, prompt_mask] = left_padded(prompts, P, pad);

  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::vector<int64_t> stops;
  if (eos >= 0) stops.push_back(eos);
  for (int64_t s : options.stop_ids)
    if (s >= 0) stops.push_back(s);
  Responses responses(B, N, pad, std::move(stops), device);
  {
    torch::InferenceMode inference;
    AutocastScope autocast(device, options.precision);
    NextLogits model_side(model, prompt_ids.to(device), prompt_mask.to(device), options,
                          P + std::max<int64_t>(N, 1));
    auto logits = model_side.first();
    std::vector<float> scratch;
    for (int64_t step = 0; step < N; ++step) {
      auto [next, lp] =
          sample_step(logits, options, cfg.vocab_size, gen, total_rows, temperature, scratch);
      bool all_done = false;
      next = responses.record(next, lp, &all_done);
      if (all_done) break;
      if (step + 1 < N) logits = model_side.after(next);
    }
  }

  GenerationOutput out;
  out.prompt_ids = prompt_ids;
  out.prompt_mask = prompt_mask;
  responses.assemble(out);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return out;
}

}  // namespace rlhf::policy

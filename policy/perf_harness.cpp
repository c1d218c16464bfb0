#include "policy/perf_harness.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/error.h"
#include "policy/generation.h"
#include "policy/model.h"
#include "policy/training.h"

namespace rlhf::policy {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double measure_gemm(int n) {
  torch::NoGradGuard ng;
  auto a = torch::randn({n, n});
  auto b = torch::randn({n, n});
  auto c = torch::matmul(a, b);  // warm-up
  int reps = 0;
  double start = now_s(), elapsed = 0;
  while (elapsed < 1.0 || reps < 3) {
    c = torch::matmul(a, b);
    ++reps;
    elapsed = now_s() - start;
  }
  return 2.0 * n * n * static_cast<double>(n) * reps / elapsed / 1e9;
}

double measure_generation(Transformer& model, int batch, int prompt_len, int new_tokens, bool cache,
                          uint64_t seed, int repeat) {
  std::vector<std::vector<int64_t>> prompts(batch);
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < prompt_len; ++t) prompts[b].push_back(3 + (b * 31 + t * 7) % 1000);
  SamplingOptions opt;
  opt.max_new_tokens = new_tokens;
  opt.temperature = 1.0f;
  opt.seed = seed;
  opt.eos_id = -1;  // never stop early: every sequence produces new_tokens
  opt.use_cache = cache;
  (void)generate(model, prompts, SamplingOptions{4, 1.0f, 0, 1.0f, seed, -1, cache});  // warm-up
  std::vector<double> rates;
  for (int r = 0; r < std::max(1, repeat); ++r) {
    double start = now_s();
    auto out = generate(model, prompts, opt);
    rates.push_back(static_cast<double>(batch) * new_tokens / (now_s() - start));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

std::map<std::string, double> run_perf_harness(const PerfOptions& o, bool print_progress) {
  std::map<std::string, double> r;
  auto say = [&](const char* what) {
    if (print_progress) std::fprintf(stderr, "bench: %s...\n", what);
  };
  static const std::vector<std::string> kOnly = {
      "", "gemm", "gen_b1_cache", "gen_b1_nocache", "gen_b32_cache", "train"};
  if (std::find(kOnly.begin(), kOnly.end(), o.only) == kOnly.end())
    throw Error("bench: unknown measurement '" + o.only +
                "' (expected gemm, gen_b1_cache, gen_b1_nocache, gen_b32_cache or train)");
  auto want = [&](const char* key) { return o.only.empty() || o.only == key; };
  torch::manual_seed(static_cast<int64_t>(o.seed));
  r["threads"] = torch::get_num_threads();

  if (want("gemm")) {
    say("gemm peak");
    r["gemm_gflops"] = measure_gemm(o.quick ? 512 : o.gemm_size);
  }

  ModelConfig cfg;
  cfg.vocab_size = o.vocab;
  cfg.dim = o.dim;
  cfg.n_layers = o.n_layers;
  cfg.n_heads = o.n_heads;
  cfg.n_kv_heads = o.n_heads;
  cfg.max_seq_len = std::max(o.train_seq, o.gen_prompt_len + o.gen_new_tokens) + 8;
  Transformer model(cfg);
  init_weights(model);
  model->eval();
  r["params"] = static_cast<double>(cfg.num_parameters());

  int new_tokens = o.quick ? 16 : o.gen_new_tokens;
  if (want("gen_b1_cache")) {
    say("generation batch 1 with KV cache");
    r["gen_b1_cache"] =
        measure_generation(model, 1, o.gen_prompt_len, new_tokens, true, o.seed, o.repeat);
  }
  if (want("gen_b1_nocache")) {
    say("generation batch 1 without KV cache");
    r["gen_b1_nocache"] =
        measure_generation(model, 1, o.gen_prompt_len, new_tokens, false, o.seed, o.repeat);
  }
  if (want("gen_b32_cache")) {
    say("generation batch 32 with KV cache");
    r["gen_b32_cache"] =
        measure_generation(model, 32, o.gen_prompt_len, new_tokens, true, o.seed, o.repeat);
  }
  if (!want("train")) return r;

  say("training throughput");
  model->train();
  int B = o.quick ? 4 : o.train_batch, T = o.quick ? 64 : o.train_seq;
  // The trainers' optimizer (policy/training.h): decay / no-decay groups, clipping at 1.0.
  training::NamedTensors params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
  training::Optimizer opt(params, training::AdamWOptions{});
  auto data = torch::randint(3, o.vocab, {B, T + 1}, torch::kLong);
  auto inputs = data.slice(1, 0, T), targets = data.slice(1, 1, T + 1);
  auto step = [&] {
    opt.zero_grad();
    auto logits = model->forward(inputs);
    auto loss =
        torch::nn::functional::cross_entropy(logits.reshape({-1, o.vocab}), targets.reshape({-1}));
    loss.backward();
    opt.step(3e-4, 1.0);
  };
  step();  // warm-up
  int steps = o.quick ? 2 : o.train_steps;
  double start = now_s();
  for (int s = 0; s < steps; ++s) step();
  double secs = now_s() - start;
  double tokens = static_cast<double>(B) * T * steps;
  r["train_tokens_per_s"] = tokens / secs;
  // PaLM-style accounting: 6 N per token (forward + backward, N = non-embedding-lookup params
  // incl. the output projection), plus attention 12 * L * D * T per token.
  double n_params = static_cast<double>(cfg.num_parameters()) -
                    static_cast<double>(cfg.vocab_size) * cfg.dim *
                        (cfg.tie_embeddings ? 0 : 1);  // the embedding lookup is not a matmul
  double flops_per_token = 6.0 * n_params + 12.0 * cfg.n_layers * cfg.dim * T;
  r["train_gflops"] = flops_per_token * r["train_tokens_per_s"] / 1e9;
  if (r.count("gemm_gflops")) r["train_peak_fraction"] = r["train_gflops"] / r["gemm_gflops"];
  return r;
}

}  // namespace rlhf::policy

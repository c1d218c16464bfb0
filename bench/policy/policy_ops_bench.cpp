// Fused decoder kernels (policy/model/fused_ops.h) and the decoding engine
// (policy/decoding/fast_decode.h) against their reference compositions, in one run: a training step
// (forward, backward, AdamW), sampling 32 tokens for 1 and for 32 prompts through generate() (the
// engine when fused, the libtorch layers otherwise) and the token cross-entropy alone (forward and
// backward; reference: libtorch's cross_entropy) at two model shapes (the quickstart's student and
// `rlhf bench`'s model), fused and reference interleaved round by round so machine noise hits both
// alike. Prints milliseconds per step (median of the rounds) and the ratio reference / fused;
// --json adds one JSON object line.
//
//   build/bench/policy/policy_ops_bench [--rounds 5] [--steps 10] [--threads 1] [--json]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/allocator_tuning.h"
#include "policy/decoding/generation.h"
#include "policy/model/fused_ops.h"
#include "policy/model/model.h"
#include "policy/runtime/cpu_block_cache.h"

namespace {

using rlhf::policy::ModelConfig;
using rlhf::policy::Transformer;

struct Shape {
  std::string name;
  int vocab, dim, layers, heads, batch, seq;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Seconds per call of `step` over `steps` calls after one warm-up call.
double time_steps(const std::function<void()>& step, int steps) {
  step();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  return seconds_since(t0) / steps;
}

Transformer make_model(const Shape& s) {
  ModelConfig c;
  c.vocab_size = s.vocab;
  c.dim = s.dim;
  c.n_layers = s.layers;
  c.n_heads = s.heads;
  c.n_kv_heads = s.heads;
  c.max_seq_len = std::max(s.seq, 160);
  torch::manual_seed(0);
  Transformer m(c);
  rlhf::policy::init_weights(m);
  return m;
}

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);

// One training step's closure: forward, token cross-entropy, backward, AdamW.
std::function<void()> train_step(const Shape& s, Transformer m) {
  auto opt =
      std::make_shared<torch::optim::AdamW>(m->parameters(), torch::optim::AdamWOptions(1e-4));
  auto ids = torch::randint(0, s.vocab, {s.batch, s.seq}, torch::kLong);
  auto targets = torch::randint(0, s.vocab, {s.batch, s.seq}, torch::kLong);
  return [=]() mutable {
    opt->zero_grad();
    auto logits = m->forward(ids);
    token_cross_entropy(logits, targets).backward();
    opt->step();
  };
}

// The mean token cross-entropy: fused::token_logprobs when the fused kernels are on, libtorch's
// cross_entropy (log_softmax and nll_loss, forward and backward) otherwise.
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (rlhf::policy::fused::has_fused_kernel(logits))
    return -rlhf::policy::fused::token_logprobs(logits, targets).mean();
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              targets.reshape({-1}));
}

// The loss alone, forward and backward, on [batch * seq, vocab] logits.
std::function<void()> cross_entropy_step(const Shape& s) {
  auto logits = torch::randn({s.batch * s.seq, s.vocab}).set_requires_grad(true);
  auto targets = torch::randint(0, s.vocab, {s.batch * s.seq}, torch::kLong);
  return [=]() mutable {
    logits.mutable_grad() = torch::Tensor();
    token_cross_entropy(logits, targets).backward();
  };
}

// One closure that samples 32 new tokens for `rows` prompts of 8 tokens through generate() (KV
// cache, temperature 1, no early stop): the decoding engine with the fused kernels on, the
// libtorch layers with them off.
std::function<void()> decode(const Shape& s, Transformer m, int rows) {
  std::vector<std::vector<int64_t>> prompts(rows);
  for (int b = 0; b < rows; ++b)
    for (int t = 0; t < 8; ++t) prompts[b].push_back(3 + (b * 31 + t * 7) % (s.vocab - 3));
  rlhf::policy::SamplingOptions o;
  o.max_new_tokens = 32;
  o.eos_id = -1;
  return [=]() mutable { (void)rlhf::policy::generate(m, prompts, o); };
}

}  // namespace

int main(int argc, char** argv) {
  rlhf::tune_allocator();
  rlhf::policy::install_cpu_block_cache();  // RLHF_CPU_BLOCK_CACHE=0: without (for an A/B)
  int rounds = 5, steps = 10, threads = 1;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "policy_ops_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (a == "--rounds")
      rounds = std::max(1, next());
    else if (a == "--steps")
      steps = std::max(1, next());
    else if (a == "--threads")
      threads = std::max(1, next());
    else if (a == "--json")
      json = true;
    else {
      std::fprintf(stderr,
                   "policy_ops_bench: unknown flag %s (expected --rounds N, --steps N, "
                   "--threads N, --json)\n",
                   a.c_str());
      return 2;
    }
  }
  at::set_num_threads(threads);
  const std::vector<Shape> shapes = {{"quickstart", 512, 128, 4, 4, 16, 64},
                                     {"bench", 4096, 256, 4, 8, 16, 128}};
  std::map<std::string, double> out;
  for (const auto& s : shapes) {
    for (const std::string kind : {"train", "decode_b1", "decode_b32", "cross_entropy"}) {
      auto model = make_model(s);
      auto step = kind == "train"        ? train_step(s, model)
                  : kind == "decode_b1"  ? decode(s, model, 1)
                  : kind == "decode_b32" ? decode(s, model, 32)
                                         : cross_entropy_step(s);
      std::vector<double> fused, reference;
      long faults_fused = 0;
      for (int r = 0; r < rounds; ++r) {
        rlhf::policy::fused::set_fused_kernels(true);
        long f0 = minor_faults();
        fused.push_back(time_steps(step, steps));
        faults_fused += minor_faults() - f0;
        rlhf::policy::fused::set_fused_kernels(false);
        reference.push_back(time_steps(step, steps));
      }
      rlhf::policy::fused::set_fused_kernels(true);
      const std::string key = s.name + "_" + kind;
      out[key + "_fused_ms"] = 1000 * median(fused);
      out[key + "_reference_ms"] = 1000 * median(reference);
      out[key + "_speedup"] = median(reference) / median(fused);
      out[key + "_fused_faults_per_step"] = double(faults_fused) / (rounds * (steps + 1));
      std::printf(
          "%-22s fused %8.2f ms  reference %8.2f ms  speedup %.2fx  (%.0f page faults/step)\n",
          key.c_str(), out[key + "_fused_ms"], out[key + "_reference_ms"], out[key + "_speedup"],
          out[key + "_fused_faults_per_step"]);
      std::fflush(stdout);
    }
  }
  if (json) {
    std::printf("{");
    bool first = true;
    for (const auto& [k, v] : out) {
      std::printf("%s\"%s\": %.4f", first ? "" : ", ", k.c_str(), v);
      first = false;
    }
    std::printf("}\n");
  }
  return 0;
}

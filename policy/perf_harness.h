// The performance harness behind `rlhf bench` and bench/policy_bench: measures, in one process,
// the machine's practical GEMM peak and the policy's generation and training throughput, so the
// figures can be read as ratios against that peak.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace rlhf::policy {

struct PerfOptions {
  int dim = 256;
  int n_layers = 4;
  int n_heads = 8;
  int vocab = 4096;
  int gen_new_tokens = 128;  // per generation measurement
  int gen_prompt_len = 8;
  int train_batch = 16;
  int train_seq = 256;
  int train_steps = 6;  // timed steps (after 1 warm-up step)
  int gemm_size = 2048;
  uint64_t seed = 0;
  bool quick = false;  // smaller settings for smoke tests
  // Only this measurement (a key below, e.g. "gen_b32_cache", or "train" for the training pair);
  // "" = all. For profilers: `perf record rlhf bench --only gen_b32_cache --repeat 20`.
  std::string only;
  int repeat = 1;  // generation runs per measurement; the median is reported
};

// Keys: gemm_gflops, gen_b1_cache, gen_b1_nocache, gen_b32_cache (tokens/s), train_tokens_per_s,
// train_gflops, train_peak_fraction, threads, params. Throws rlhf::Error for an unknown `only`.
std::map<std::string, double> run_perf_harness(const PerfOptions& options,
                                               bool print_progress = true);

}  // namespace rlhf::policy

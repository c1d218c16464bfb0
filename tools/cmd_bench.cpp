// `rlhf bench [--json]`: the performance harness (see bench/harness/perf_harness.h,
// docs/performance.md). The data-parallel training figure (train_dp2_*) comes from two copies of
// this command started with the internal --dp-worker flag, one per rank.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/harness/perf_harness.h"
#include "common/blas_tuning.h"
#include "common/error.h"
#include "tools/cli.h"

namespace {

// The metrics as a table (keys padded to the longest): one line each (seconds with 4 decimals,
// other figures with 2).
void print_table(const std::map<std::string, double>& r) {
  int w = 24;
  for (const auto& kv : r) w = std::max(w, static_cast<int>(kv.first.size()));
  std::printf("%-*s %12s\n", w, "metric", "value");
  for (const auto& [k, v] : r) {
    auto ends_with = [&](const std::string& tail) {
      return k.size() >= tail.size() && k.compare(k.size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool seconds = ends_with("_s") && !ends_with("_per_s");  // small: 4 decimals
    std::printf("%-*s %12.*f\n", w, k.c_str(), seconds ? 4 : 2, v);
  }
}

// `rlhf bench --compare-families`: Qwen3-shaped and Llama-shaped models of equal FLOPs per token,
// two layouts, decoded (and trained) alternately in this process (perf_harness.h).
int run_compare(const rlhf::cli::Args& args, const rlhf::policy::PerfOptions& o) {
  if (args.has("model") || !o.only.empty() || o.device != "cpu" ||
      o.precision != rlhf::policy::Precision::kFp32)
    throw rlhf::UsageError(
        "--compare-families: measures two built-in CPU float32 models; it takes no --model, "
        "--only, --device or --dtype");
  if (args.has("threads")) torch::set_num_threads(static_cast<int>(args.get_int("threads")));
  const int rounds = args.has("repeat") ? o.repeat : 5;
  const auto r = rlhf::policy::run_family_comparison(o, rounds, true);
  if (args.get_bool("json")) {
    nlohmann::json j;
    for (const auto& [k, v] : r) j[k] = v;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  print_table(r);
  std::printf("\nqwen3 / llama tokens/s at equal FLOPs per token, median of %d rounds (range):\n",
              rounds);
  for (const char* prefix : {"cmp_", "cmp_wide_"}) {
    auto ratio = [&](const std::string& what) {
      const std::string k = std::string(prefix) + "ratio_" + what;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.3f (%.3f-%.3f)", r.at(k), r.at(k + "_min"),
                    r.at(k + "_max"));
      return std::string(buf);
    };
    std::printf("  %s: decode batch 1 %s, batch 32 %s, training %s\n",
                std::string(prefix) == "cmp_" ? "heads x head_dim = d (Qwen3-8B layout)"
                                              : "head_dim 2 d / heads (Qwen3-0.6B layout)",
                ratio("b1").c_str(), ratio("b32").c_str(), ratio("train").c_str());
  }
  return 0;
}

// Adds the data-parallel figures (two worker processes, then one) to r.
void add_train_dp(const rlhf::cli::Args& args, const rlhf::policy::PerfOptions& o,
                  std::map<std::string, double>& r) {
  std::fprintf(stderr, "bench: training throughput, 2 ranks x 1 thread (Gloo, loopback)...\n");
  std::vector<std::string> worker = {"/proc/self/exe", "bench", "--dp-worker", "--seed",
                                     std::to_string(o.seed)};
  if (o.quick) worker.push_back("--quick");
  if (!o.model_dir.empty()) worker.insert(worker.end(), {"--model", o.model_dir});
  worker.insert(worker.end(), {"--dtype", args.get("dtype")});
  for (const auto& [k, v] : rlhf::policy::measure_train_dp(worker, 2)) r[k] = v;
  // The same worker as one rank alone: the scaling baseline (the same code, threads and
  // per-rank batch rule; only the second rank is missing).
  std::fprintf(stderr, "bench: training throughput, 1 rank x 1 thread (the scaling baseline)...\n");
  for (const auto& [k, v] : rlhf::policy::measure_train_dp(worker, 1)) r[k] = v;
  r["train_dp2_scaling"] = r["train_dp2_tokens_per_s"] / r["train_dp1_tokens_per_s"];
  if (r.count("train_tokens_per_s"))
    r["train_dp2_speedup"] = r["train_dp2_tokens_per_s"] / r["train_tokens_per_s"];
}

int run_bench(const rlhf::cli::Args& args) {
  rlhf::policy::PerfOptions o;
  o.quick = args.get_bool("quick");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  o.only = args.get("only");
  o.repeat = static_cast<int>(args.get_int("repeat"));
  o.device = args.get("device");
  o.precision = rlhf::policy::parse_precision(args.get("dtype"), "--dtype");
  if (o.repeat < 1) throw rlhf::UsageError("--repeat: expected >= 1, got " + args.get("repeat"));
  if (args.has("model")) {
    o.model_dir = args.get("model");
    if (o.model_dir.empty()) throw rlhf::UsageError("--model: expected a model folder, got \"\"");
  }
  if (args.get_bool("compare-families")) return run_compare(args, o);
  if (args.has("export-llama2c")) {
    // The measured model for the llama2.c peer (bench/peer/compare_llama2c.sh); nothing is timed.
    const std::string dir = args.get("export-llama2c");
    if (dir.empty()) throw rlhf::UsageError("--export-llama2c: expected a folder, got \"\"");
    if (!o.model_dir.empty())
      throw rlhf::UsageError("--export-llama2c writes the built-in model; it takes no --model");
    rlhf::policy::export_llama2c(o, dir);
    std::fprintf(stderr, "bench: wrote %s/model.bin and %s/tokenizer.bin (llama2.c format)\n",
                 dir.c_str(), dir.c_str());
    return 0;
  }
  if (args.get_bool("dp-worker")) {
    // One rank of the train_dp2 measurement (started by the code below in another process).
    nlohmann::json j;
    for (const auto& [k, v] : rlhf::policy::run_train_dp_worker(o)) j[k] = v;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (args.has("threads")) torch::set_num_threads(static_cast<int>(args.get_int("threads")));
  auto r = rlhf::policy::run_perf_harness(o, true);
  // The 2-rank figure is a CPU one (Gloo over loopback, one thread per rank).
  if (rlhf::policy::wants_train_dp(o) && o.device == "cpu") add_train_dp(args, o, r);
  nlohmann::json j;
  for (const auto& [k, v] : r) j[k] = v;
  // Which OpenBLAS kernels ran (see common/blas_tuning.h): "Prescott" means generic SSE3 ones.
  const std::string core = rlhf::openblas_core_name();
  j["openblas_core"] = core.empty() ? "none" : core;
  j["device"] = o.device;
  j["dtype"] = rlhf::policy::precision_name(o.precision);
  if (!o.model_dir.empty()) j["model"] = o.model_dir;
  if (args.get_bool("json")) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  print_table(r);
  std::printf("%-24s %12s\n", "openblas_core", j["openblas_core"].get<std::string>().c_str());
  if (o.only.empty() && o.device == "cpu")
    std::printf(
        "\nratios: cache/nocache (b1) %.2fx, b32/b1 %.2fx, train/gemm %.0f%%, "
        "train 2 ranks/1 rank %.2fx, 2 ranks/1 process %.2fx\n",
        r["gen_b1_cache"] / r["gen_b1_nocache"], r["gen_b32_cache"] / r["gen_b1_cache"],
        100.0 * r["train_peak_fraction"], r["train_dp2_scaling"], r["train_dp2_speedup"]);
  return 0;
}

rlhf::cli::Register reg(
    {"bench",
     "measure GEMM peak, generation and training throughput, 1 process and 2 ranks "
     "(d=256, 4 layers)",
     "[--json] [--quick] [--threads N] [--only NAME] [--repeat N] [--device D] [--dtype T] "
     "[--model DIR] [--compare-families] [--export-llama2c DIR]",
     {{"json", "print one JSON object as the last stdout line", "", true},
      {"quick", "tiny settings (smoke test, seconds)", "", true},
      {"threads", "libtorch intra-op threads (default: libtorch's choice)"},
      {"seed", "random seed", "0"},
      {"only",
       "one measurement: gemm, gen_b1_cache, gen_b1_nocache, "
       "gen_b32_cache, gen_b256_cache (CUDA), train (one process and 2 ranks) or train_dp2 (2 "
       "ranks only)",
       ""},
      {"repeat", "generation runs per measurement (median reported)", "1"},
      {"device", "cpu | cuda | cuda:N (cuda adds gen_b256_cache; train_dp2 is CPU only)", "cpu"},
      {"dtype", "fp32 | bf16 (bf16 GEMM; autocast generation and training)", "fp32"},
      {"model",
       "measure this model folder (native checkpoint or Hugging Face config.json + safetensors) "
       "instead of the built-in d=256 shape; its config sets the shape, vocabulary and context"},
      {"compare-families",
       "decode (batch 1 and 32) and train Qwen3-shaped and Llama-shaped random-weight models of "
       "equal FLOPs per token (two layouts) alternately, and report qwen3/llama ratios (median "
       "and range over --repeat rounds, default 5; docs/performance.md)",
       "", true},
      {"export-llama2c",
       "write the measured model (weights of --seed) as DIR/model.bin and DIR/tokenizer.bin in "
       "llama2.c's format and exit (see bench/peer/compare_llama2c.sh)"},
      {"dp-worker",
       "(internal) run as one rank of the train_dp2 measurement; bench "
       "starts these itself",
       "", true}},
     run_bench});

}  // namespace

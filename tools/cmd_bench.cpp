// `rlhf bench [--json]`: the performance harness (see policy/perf_harness.h, docs/performance.md).
#include <torch/torch.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/blas_tuning.h"
#include "common/error.h"
#include "policy/perf_harness.h"
#include "tools/cli.h"

namespace {

int run_bench(const rlhf::cli::Args& args) {
  rlhf::policy::PerfOptions o;
  o.quick = args.get_bool("quick");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  o.only = args.get("only");
  o.repeat = static_cast<int>(args.get_int("repeat"));
  if (o.repeat < 1) throw rlhf::UsageError("--repeat: expected >= 1, got " + args.get("repeat"));
  if (args.has("threads")) torch::set_num_threads(static_cast<int>(args.get_int("threads")));
  auto r = rlhf::policy::run_perf_harness(o, true);
  nlohmann::json j;
  for (const auto& [k, v] : r) j[k] = v;
  // Which OpenBLAS kernels ran (see common/blas_tuning.h): "Prescott" means generic SSE3 ones.
  const std::string core = rlhf::openblas_core_name();
  j["openblas_core"] = core.empty() ? "none" : core;
  if (args.get_bool("json")) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%-22s %12s\n", "metric", "value");
    for (const auto& [k, v] : r) std::printf("%-22s %12.2f\n", k.c_str(), v);
    std::printf("%-22s %12s\n", "openblas_core", j["openblas_core"].get<std::string>().c_str());
    if (o.only.empty())
      std::printf("\nratios: cache/nocache (b1) %.2fx, b32/b1 %.2fx, train/gemm %.0f%%\n",
                  r["gen_b1_cache"] / r["gen_b1_nocache"], r["gen_b32_cache"] / r["gen_b1_cache"],
                  100.0 * r["train_peak_fraction"]);
  }
  return 0;
}

rlhf::cli::Register reg({"bench",
                         "measure GEMM peak, generation and training throughput (d=256, 4 layers)",
                         "[--json] [--quick] [--threads N] [--only NAME] [--repeat N]",
                         {{"json", "print one JSON object as the last stdout line", "", true},
                          {"quick", "tiny settings (smoke test, seconds)", "", true},
                          {"threads", "libtorch intra-op threads (default: libtorch's choice)"},
                          {"seed", "random seed", "0"},
                          {"only",
                           "one measurement: gemm, gen_b1_cache, gen_b1_nocache, "
                           "gen_b32_cache or train (for profilers)",
                           ""},
                          {"repeat", "generation runs per measurement (median reported)", "1"}},
                         run_bench});

}  // namespace

#include "common/blas_tuning.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <vector>

namespace rlhf {

std::string openblas_core_name() {
  using CoreNameFn = char* (*)();
  auto fn = reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!fn) return "";
  const char* name = fn();
  return name ? name : "";
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "";
}

std::string best_openblas_core_for_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

void tune_blas_or_reexec(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  const char* opt = std::getenv("RLHF_BLAS_AUTOTUNE");
  if (opt != nullptr && std::string(opt) == "0") return;
  std::string core = openblas_core_name();
  std::transform(core.begin(), core.end(), core.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // OpenBLAS's names for pre-AVX2 x86 kernels (what it falls back to on unknown CPUs).
  static const std::vector<std::string> kOld = {"prescott",   "core2",       "penryn", "dunnington",
                                                "nehalem",    "sandybridge", "atom",   "katmai",
                                                "coppermine", "northwood",   "banias", "generic"};
  if (core.empty() || std::find(kOld.begin(), kOld.end(), core) == kOld.end()) return;
  const std::string best = best_openblas_core_for_cpu();
  if (best.empty()) return;
  if (setenv("OPENBLAS_CORETYPE", best.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: carry on with the kernels we have
}

}  // namespace rlhf

// The OpenBLAS kernel fix (common/blas_tuning.h), checked in a process that loads libtorch and
// therefore OpenBLAS: this test binary's main() ran rlhf::tune_blas_or_reexec() first.
#include "common/blas_tuning.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

TEST(BlasTuning, OpenBlasRunsTheBestKernelsTheCpuSupports) {
  // Touch torch so nothing is optimised away; OpenBLAS is loaded with libtorch either way.
  auto c = torch::matmul(torch::ones({64, 64}), torch::ones({64, 64}));
  EXPECT_FLOAT_EQ(c[0][0].item<float>(), 64.0f);
  const std::string core = rlhf::openblas_core_name();
  if (core.empty()) GTEST_SKIP() << "libtorch does not use OpenBLAS here";
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const char* autotune = std::getenv("RLHF_BLAS_AUTOTUNE");
  const std::string best = rlhf::best_openblas_core_for_cpu();
  std::printf("OpenBLAS core: %s (best for this CPU: %s, OPENBLAS_CORETYPE=%s)\n", core.c_str(),
              best.empty() ? "-" : best.c_str(), forced ? forced : "(unset)");
  if (autotune && std::string(autotune) == "0") GTEST_SKIP() << "RLHF_BLAS_AUTOTUNE=0";
  if (best.empty()) GTEST_SKIP() << "no AVX2/AVX-512: nothing to tune";
  // Either OpenBLAS recognised the CPU itself (no re-exec needed) or the re-exec set the variable.
  for (const char* old : {"prescott", "core2", "penryn", "nehalem", "sandybridge", "generic"})
    EXPECT_NE(lower(core), old) << "OpenBLAS still runs pre-AVX2 kernels on a CPU with " << best;
}

}  // namespace

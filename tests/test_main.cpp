// main() of every test executable: GoogleTest, after the same OpenBLAS kernel fix as `rlhf`
// (common/blas_tuning.h), so in-process torch tests run on the same kernels as the CLI.
#include <gtest/gtest.h>

#include "common/blas_tuning.h"

int main(int argc, char** argv) {
  rlhf::tune_blas_or_reexec(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

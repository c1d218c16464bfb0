// The `rlhf` executable: every subcommand registers itself from tools/cmd_*.cpp.
#include "common/allocator_tuning.h"
#include "common/blas_tuning.h"
#include "policy/runtime/cpu_block_cache.h"
#include "tools/cli.h"

int main(int argc, char** argv) {
  rlhf::tune_blas_or_reexec(argc, argv);  // OpenBLAS on an unrecognised CPU: see the header
  rlhf::tune_allocator();  // no mmap/munmap of activation buffers every step: see the header
  rlhf::policy::install_cpu_block_cache();  // the same for buffers above glibc's mmap threshold
  return rlhf::cli::dispatch(argc, argv);
}

// The `rlhf` executable: every subcommand registers itself from tools/cmd_*.cpp.
#include <cstdio>

#include "common/allocator_tuning.h"
#include "common/blas_tuning.h"
#include "common/error.h"
#include "policy/kernels/isa.h"
#include "policy/runtime/cpu_block_cache.h"
#include "tools/cli.h"

int main(int argc, char** argv) {
  rlhf::tune_blas_or_reexec(argc, argv);  // OpenBLAS on an unrecognised CPU: see the header
  rlhf::tune_allocator();  // no mmap/munmap of activation buffers every step: see the header
  rlhf::policy::install_cpu_block_cache();  // the same for buffers above glibc's mmap threshold
  try {
    rlhf::policy::kernels::active_isa();  // RLHF_CPU_ISA: every command refuses a bad value
  } catch (const rlhf::Error& e) {
    std::fprintf(stderr, "rlhf: error: %s\n", e.what());
    return e.exit_code();
  }
  return rlhf::cli::dispatch(argc, argv);
}

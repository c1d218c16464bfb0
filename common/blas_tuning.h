// OpenBLAS kernel selection on CPUs it does not recognise.
//
// OpenBLAS (Debian's libopenblas0-*, which libtorch uses for CPU matmuls) picks its kernels from
// the CPU model it reads with CPUID. Virtual machines that hide the model ("Intel(R) Xeon(R)
// Processor") make it fall back to its generic "Prescott" (SSE3) kernels even on CPUs with AVX-512.
// Measured on the 2-core development VM (docs/performance.md): a 2048² fp32 matmul ran at
// 56 GFLOP/s with the Prescott kernels and 246-280 GFLOP/s with the SkylakeX ones; SFT-style
// training went from 1,199 to 3,114 tokens/s.
//
// OpenBLAS chooses its kernels while it is loaded (before main()), and only the environment
// variable OPENBLAS_CORETYPE overrides the choice, so the fix re-executes the program once with
// that variable set. Child processes inherit it and are not re-executed again.
//
// Thread safety: tune_blas_or_reexec() sets the environment and may replace the process: call it
// first in main(), before any other thread starts. The query functions may be called from any
// thread. None of these functions throws; a failed exec leaves the process running as it was.
#pragma once

#include <string>

namespace rlhf {

// The kernel family OpenBLAS is running ("Prescott", "SkylakeX", ...), or "" when no OpenBLAS is
// loaded in this process.
std::string openblas_core_name();

// The CPU's model name as /proc/cpuinfo gives it ("Intel(R) Xeon(R) Processor", "AMD EPYC 9R14
// 96-Core Processor"), or "" where there is none (not Linux, or no "model name" line). For run
// records: a measured figure names the machine it came from.
std::string cpu_model_name();

// The OPENBLAS_CORETYPE this CPU supports best among the ones we use: "SkylakeX" (AVX-512 F, BW,
// VL, DQ), "Haswell" (AVX2 + FMA), or "" (neither, or not x86).
std::string best_openblas_core_for_cpu();

// Call first in main(). When OpenBLAS is loaded with kernels older than Haswell, the CPU supports
// better ones, OPENBLAS_CORETYPE is unset and RLHF_BLAS_AUTOTUNE is not "0": sets
// OPENBLAS_CORETYPE and execv()s /proc/self/exe with the same arguments (never returns then).
// Returns normally in every other case, including a failed exec.
void tune_blas_or_reexec(int argc, char** argv);

}  // namespace rlhf

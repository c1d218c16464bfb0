// Internal to policy/kernels: how a function is compiled for one instruction set.
//
// Each x86 kernel carries its instruction set as a function attribute (RLHF_TARGET_AVX2 / _AVX512)
// rather than its file being compiled with -mavx2 / -mavx512f: inline functions and templates
// from shared headers (std::min, std::vector, ...) instantiated in such a file would be compiled
// for that instruction set, and the linker may keep that copy for every caller, portable ones
// included. With the attribute only the marked functions use the wider instructions (see
// policy/kernels/CMakeLists.txt).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define RLHF_KERNELS_X86 1
#define RLHF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RLHF_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

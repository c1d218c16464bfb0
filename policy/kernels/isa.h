// The one instruction-set dispatch of the CPU kernels in policy/kernels/ (the decoding kernels of
// decode_kernels.h and the token log-probability rows of logprob_rows.h alike).
//
// Every kernel has a portable version (plain C++, its reference twin) and, where it pays, versions
// for AVX2 + FMA and for AVX-512F in files of their own (decode_kernels_avx2.cpp, ...). Which one
// runs is decided here, for all of them at once: the active instruction set is chosen at the first
// call of active_isa() (or set_isa()) as the best one this CPU supports, capped by the environment
// variable RLHF_CPU_ISA (portable, avx2 or avx512: for A/B measurements and for CPUs that
// misreport). Tests switch it with IsaScope to run each kernel on every instruction set the CPU
// has and compare it with its portable twin.
//
// Errors: active_isa() and set_isa() throw rlhf::Error when RLHF_CPU_ISA is set to anything but
// portable, avx2 or avx512, or when the retired RLHF_DECODE_ISA is set (renamed to RLHF_CPU_ISA);
// the message names the variable, its value and the accepted values. The choice is retried (and
// the error thrown again) on every call until it succeeds, so programs call active_isa() once at
// start-up (the rlhf binary does, in tools/rlhf_main.cpp) and the kernels never throw it from a
// worker thread.
//
// Thread safety: all functions here may be called from any thread. The active instruction set is
// process-wide. Each kernel call reads it once, when it starts, and runs on that one to its end, so
// switching while kernels run on other threads is safe (no data race, no mixed call); calls that
// start after the switch use the new one.
#pragma once

#include <vector>

namespace rlhf::policy::kernels {

// Instruction sets, each a superset of the ones before it: AVX2 means AVX2 + FMA, AVX-512 means
// AVX-512F with AVX2 + FMA. Compare with < to ask whether one includes another.
enum class Isa { kPortable, kAvx2, kAvx512 };

// The best instruction set this CPU supports (CPUID, read once); kPortable off x86-64.
Isa cpu_isa();

// Every instruction set this CPU supports, kPortable first (for tests that run each one).
std::vector<Isa> cpu_isas();

// The instruction set RLHF_CPU_ISA=`value` selects on a CPU that supports `cpu`: `cpu` when value
// is null or empty, else the named one capped at `cpu`. Throws rlhf::Error naming RLHF_CPU_ISA,
// the value and the accepted values when it is none of them.
Isa isa_from_env(const char* value, Isa cpu);

// The instruction set the kernels use now: at the first call, isa_from_env(RLHF_CPU_ISA,
// cpu_isa()) (see "Errors" above). Lock-free: one relaxed atomic load after the first call.
Isa active_isa();

// Makes `isa` (capped at cpu_isa()) the active instruction set and returns the previous one.
Isa set_isa(Isa isa);

// "portable", "avx2" or "avx512" (the spelling RLHF_CPU_ISA takes).
const char* isa_name(Isa isa);

// Makes an instruction set active for its lifetime and restores the previous one after (tests).
// Scopes on different threads that overlap restore in an undefined order: use one at a time.
class IsaScope {
 public:
  explicit IsaScope(Isa isa) : previous_(set_isa(isa)) {}
  ~IsaScope() { set_isa(previous_); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  Isa previous_;
};

}  // namespace rlhf::policy::kernels

#include "policy/kernels/isa.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "common/error.h"

namespace rlhf::policy::kernels {

namespace {

Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

constexpr int kUnresolved = -1;
std::atomic<int> g_active{kUnresolved};  // an Isa, or kUnresolved before the first choice

// The first choice of active_isa(), from the environment; throws rlhf::Error on a bad value.
Isa resolve_active_isa() {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  const int now = g_active.load();
  if (now != kUnresolved) return static_cast<Isa>(now);
  if (const char* old = std::getenv("RLHF_DECODE_ISA"); old && *old)
    throw Error("RLHF_DECODE_ISA='" + std::string(old) +
                "' is no longer read: it was renamed RLHF_CPU_ISA (portable, avx2 or avx512)");
  const Isa chosen = isa_from_env(std::getenv("RLHF_CPU_ISA"), cpu_isa());
  g_active.store(static_cast<int>(chosen));
  return chosen;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

std::vector<Isa> cpu_isas() {
  std::vector<Isa> all;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
    if (isa <= cpu_isa()) all.push_back(isa);
  return all;
}

Isa isa_from_env(const char* value, Isa cpu) {
  if (!value || !*value) return cpu;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
    if (std::string(value) == isa_name(isa)) return std::min(isa, cpu);
  throw Error("RLHF_CPU_ISA='" + std::string(value) +
              "' is not an instruction set: expected portable, avx2 or avx512");
}

Isa active_isa() {
  const int now = g_active.load(std::memory_order_relaxed);
  return now != kUnresolved ? static_cast<Isa>(now) : resolve_active_isa();
}

Isa set_isa(Isa isa) {
  active_isa();  // the environment is checked (and a bad value refused) before the first switch
  return static_cast<Isa>(g_active.exchange(static_cast<int>(std::min(isa, cpu_isa()))));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace rlhf::policy::kernels

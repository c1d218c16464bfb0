#include "common/allocator_tuning.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace rlhf {

namespace {

bool user_tunes_malloc() {
  const char* off = std::getenv("RLHF_MALLOC_TUNE");
  if (off && std::strcmp(off, "0") == 0) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "malloc")) return true;
  return std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_");
}

}  // namespace

bool tune_allocator() {
#if defined(__GLIBC__)
  if (user_tunes_malloc()) return false;
  // Both calls also switch off glibc's dynamic threshold adjustment.
  bool ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMallocMmapThreshold)) == 1;
  ok = mallopt(M_TRIM_THRESHOLD, static_cast<int>(kMallocTrimThreshold)) == 1 && ok;
  return ok;
#else
  return false;
#endif
}

}  // namespace rlhf

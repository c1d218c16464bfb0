#include "common/allocator_tuning.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <string>

namespace {

// Sets an environment variable for one test and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

#if defined(__GLIBC__)
TEST(AllocatorTuning, AppliesOnGlibcWhenTheUserDoesNotTuneMalloc) {
  unsetenv("RLHF_MALLOC_TUNE");
  unsetenv("MALLOC_MMAP_THRESHOLD_");
  unsetenv("MALLOC_TRIM_THRESHOLD_");
  ScopedEnv tunables("GLIBC_TUNABLES", "glibc.pthread.rseq=1");
  EXPECT_TRUE(rlhf::tune_allocator());
}
#endif

#if defined(__GLIBC__)
long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// A 64 MiB block (above glibc's largest mmap threshold) freed and allocated again reuses mapped
// pages: without the tuning every one of its 16,384 pages faults again.
TEST(AllocatorTuning, LargeBlocksReuseMappedPages) {
  unsetenv("RLHF_MALLOC_TUNE");
  unsetenv("MALLOC_MMAP_THRESHOLD_");
  unsetenv("MALLOC_TRIM_THRESHOLD_");
  unsetenv("MALLOC_MMAP_MAX_");
  ScopedEnv tunables("GLIBC_TUNABLES", "glibc.pthread.rseq=1");
  ASSERT_TRUE(rlhf::tune_allocator());
  const size_t n = size_t(64) << 20;
  auto touch = [n](volatile char* p) {
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
  };
  auto* first = static_cast<volatile char*>(malloc(n));
  touch(first);
  free(const_cast<char*>(first));
  const long before = minor_faults();
  auto* second = static_cast<volatile char*>(malloc(n));
  touch(second);
  const long faults = minor_faults() - before;
  free(const_cast<char*>(second));
  EXPECT_LT(faults, 1000);
}
#endif

TEST(AllocatorTuning, LeavesMallocAloneWhenTheUserSetsIt) {
  {
    ScopedEnv off("RLHF_MALLOC_TUNE", "0");
    EXPECT_FALSE(rlhf::tune_allocator());
  }
  {
    ScopedEnv tunables("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0");
    EXPECT_FALSE(rlhf::tune_allocator());
  }
  {
    ScopedEnv threshold("MALLOC_MMAP_THRESHOLD_", "65536");
    EXPECT_FALSE(rlhf::tune_allocator());
  }
}

}  // namespace

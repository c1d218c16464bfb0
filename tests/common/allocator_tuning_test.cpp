#include "common/allocator_tuning.h"

#include <gtest/gtest.h>
#include <stdlib.h>

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

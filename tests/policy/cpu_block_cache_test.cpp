// The caching CPU allocator: large blocks come back from the cache, small ones are untouched,
// the cache stays under its cap, and a training step run through it gives the same numbers.
#include "policy/runtime/cpu_block_cache.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <torch/torch.h>

namespace rlhf::policy {
namespace {

constexpr size_t kCap = size_t(200) << 20;

class CpuBlockCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { install_cpu_block_cache(kCap); }
};

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

TEST_F(CpuBlockCacheTest, ReusesAFreedLargeBlockOfTheSameRoundedSize) {
  ASSERT_TRUE(cpu_block_cache_stats().installed);
  EXPECT_FALSE(install_cpu_block_cache(kCap));  // once per process
  const int64_t n = (40 << 20) / 4;             // 40 MiB of floats
  void* first = nullptr;
  {
    auto a = torch::ones({n});
    first = a.data_ptr();
    EXPECT_EQ(a.sum().item<float>(), float(n));
  }
  const auto before = cpu_block_cache_stats();
  EXPECT_GE(before.cached_bytes, 40 << 20);
  const long faults = minor_faults();
  auto b = torch::empty({n - 100});  // rounds up to the same 2 MiB multiple
  b.fill_(2.0f);
  EXPECT_EQ(b.data_ptr(), first);
  EXPECT_LT(minor_faults() - faults, 100);  // its pages were already mapped and touched
  const auto after = cpu_block_cache_stats();
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(after.cached_bytes, before.cached_bytes - (40 << 20));
  EXPECT_EQ(after.live_bytes, before.live_bytes + (40 << 20));
  EXPECT_EQ(b.sum().item<float>(), 2.0f * float(n - 100));
}

TEST_F(CpuBlockCacheTest, SmallBlocksBypassTheCache) {
  const auto before = cpu_block_cache_stats();
  {
    auto small = torch::ones({1024, 1024});  // 4 MiB
    EXPECT_EQ(small.sum().item<float>(), 1024.0f * 1024.0f);
  }
  const auto after = cpu_block_cache_stats();
  EXPECT_EQ(after.hits + after.misses, before.hits + before.misses);
  EXPECT_EQ(after.cached_bytes, before.cached_bytes);
}

TEST_F(CpuBlockCacheTest, ATrainingStepThroughTheCacheMatchesAFreshProcessResult) {
  // The same computation twice, the second time on reused (not zeroed) blocks: equal results
  // show no operation relies on fresh memory being zero.
  auto run = [] {
    torch::manual_seed(3);
    auto w = torch::randn({1024, 1024}).set_requires_grad(true);
    auto x = torch::randn({6000, 1024});  // 24 MB activations, 24 MB gradient
    auto y = torch::log_softmax(torch::matmul(x, w), -1);
    y.select(1, 0).sum().backward();
    return w.grad().clone();
  };
  auto first = run();
  const int64_t hits = cpu_block_cache_stats().hits;
  auto second = run();
  EXPECT_GT(cpu_block_cache_stats().hits, hits);
  EXPECT_TRUE(torch::equal(first, second));
}

TEST_F(CpuBlockCacheTest, KeepsAtMostItsCapOfFreeBlocks) {
  {
    std::vector<torch::Tensor> blocks;
    for (int i = 0; i < 8; ++i) blocks.push_back(torch::zeros({(50 << 20) / 4}));  // 8 x 50 MiB
    EXPECT_GE(cpu_block_cache_stats().live_bytes, int64_t(400) << 20);
  }
  const auto s = cpu_block_cache_stats();
  EXPECT_LE(s.cached_bytes, static_cast<int64_t>(kCap));
  // Freeing stopped keeping blocks only when the next 50 MiB no longer fitted.
  EXPECT_GT(s.cached_bytes, static_cast<int64_t>(kCap) - (int64_t(50) << 20));
}

}  // namespace
}  // namespace rlhf::policy

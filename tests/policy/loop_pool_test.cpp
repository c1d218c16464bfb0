// LoopPool (policy/kernels/loop_pool.h): every chunk runs exactly once, whatever the thread count,
// the number of loops in a row or the chunk count; default_loop_threads reads its environment.
#include "policy/kernels/loop_pool.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace rlhf {
namespace {

TEST(LoopPoolTest, EveryChunkRunsExactlyOnce) {
  for (int threads : {1, 2, 4}) {
    LoopPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int64_t chunks : {0, 1, 2, 3, 17, 1000}) {
      std::vector<std::atomic<int>> hits(chunks);
      pool.parallel_for(chunks, [&](int64_t c) { hits[c].fetch_add(1); });
      for (int64_t c = 0; c < chunks; ++c)
        ASSERT_EQ(hits[c].load(), 1) << "chunk " << c << " of " << chunks << ", " << threads;
    }
  }
}

// More chunks than one round of the ticket holds (65,535).
TEST(LoopPoolTest, ManyChunksRunInRounds) {
  LoopPool pool(2);
  const int64_t chunks = 200000;
  std::vector<std::atomic<int>> hits(chunks);
  pool.parallel_for(chunks, [&](int64_t c) { hits[c].fetch_add(1); });
  int64_t once = 0;
  for (auto& h : hits) once += h.load() == 1;
  EXPECT_EQ(once, chunks);
}

// Thousands of short loops back to back (as a decoding step runs them), with workers spinning,
// sleeping and waking between them: no chunk lost, none run twice.
TEST(LoopPoolTest, ManyShortLoopsInARow) {
  LoopPool pool(3);
  std::atomic<int64_t> sum{0};
  int64_t want = 0;
  for (int loop = 0; loop < 20000; ++loop) {
    const int64_t chunks = 1 + loop % 7;
    pool.parallel_for(chunks, [&](int64_t c) { sum.fetch_add(c + 1); });
    want += chunks * (chunks + 1) / 2;
  }
  EXPECT_EQ(sum.load(), want);
}

// Loops started from several threads at once, and from inside a chunk, all complete: a loop
// that finds the pool busy runs on its own thread.
TEST(LoopPoolTest, ConcurrentAndNestedLoops) {
  LoopPool pool(2);
  std::atomic<int64_t> total{0};
  auto body = [&] {
    for (int loop = 0; loop < 2000; ++loop)
      pool.parallel_for(5, [&](int64_t c) {
        if (c == 0) pool.parallel_for(3, [&](int64_t) { total.fetch_add(1); });
        total.fetch_add(1);
      });
  };
  std::thread a(body), b(body);
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 2 * 2000 * (5 + 3));
}

class EnvGuard {
 public:
  explicit EnvGuard(const char* name) : name_(name) {
    const char* v = getenv(name);
    had_ = v != nullptr;
    if (had_) old_ = v;
  }
  ~EnvGuard() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  bool had_;
  std::string old_;
};

TEST(LoopPoolTest, DefaultThreadsFollowTheEnvironment) {
  EnvGuard a("RLHF_DECODE_THREADS"), b("OPENBLAS_NUM_THREADS"), c("OMP_NUM_THREADS");
  unsetenv("RLHF_DECODE_THREADS");
  setenv("OPENBLAS_NUM_THREADS", "1", 1);
  setenv("OMP_NUM_THREADS", "3", 1);
  EXPECT_EQ(default_loop_threads(), 1);  // a data-parallel rank
  setenv("RLHF_DECODE_THREADS", "3", 1);
  EXPECT_EQ(default_loop_threads(), 3);
  setenv("RLHF_DECODE_THREADS", "many", 1);  // ignored
  EXPECT_EQ(default_loop_threads(), 1);
  unsetenv("RLHF_DECODE_THREADS");
  unsetenv("OPENBLAS_NUM_THREADS");
  EXPECT_EQ(default_loop_threads(), 3);
  setenv("RLHF_DECODE_THREADS", "500", 1);
  EXPECT_EQ(default_loop_threads(), 16);  // capped
}

}  // namespace
}  // namespace rlhf

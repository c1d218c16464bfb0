#include "policy/kernels/loop_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rlhf {

namespace {

// The ticket: generation (32 bits) | chunks of that loop (16 bits) | next unclaimed chunk (16).
constexpr int64_t kMaxChunksPerRound = 0xFFFF;
constexpr auto kWorkerSpin = std::chrono::microseconds(100);
constexpr auto kCallerSpinBeforeYield = std::chrono::microseconds(200);

uint64_t make_ticket(uint32_t generation, int64_t chunks) {
  return (uint64_t(generation) << 32) | (uint64_t(chunks) << 16);
}
uint32_t generation_of(uint64_t t) { return uint32_t(t >> 32); }
int64_t chunks_of(uint64_t t) { return int64_t((t >> 16) & 0xFFFF); }
int64_t next_of(uint64_t t) { return int64_t(t & 0xFFFF); }

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// A positive integer from the environment, or 0.
int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return (*end == '\0' && n > 0 && n < 1024) ? static_cast<int>(n) : 0;
}

}  // namespace

LoopPool::LoopPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { worker_main(); });
}

LoopPool::~LoopPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

bool LoopPool::claim(uint32_t generation, int64_t* first, int64_t* count) {
  const int64_t share = 2 * threads();  // each claim takes 1 / share of what is left
  uint64_t t = ticket_.load(std::memory_order_acquire);
  while (generation_of(t) == generation && next_of(t) < chunks_of(t)) {
    const int64_t take = std::max<int64_t>(1, (chunks_of(t) - next_of(t)) / share);
    if (ticket_.compare_exchange_weak(t, t + uint64_t(take), std::memory_order_acq_rel)) {
      *first = next_of(t);
      *count = take;
      return true;
    }
  }
  return false;
}

void LoopPool::run_chunks(uint32_t generation) {
  int64_t first, count;
  while (claim(generation, &first, &count)) {
    const auto& fn = *fn_.load(std::memory_order_acquire);
    const int64_t base = base_.load(std::memory_order_relaxed);
    for (int64_t c = first; c < first + count; ++c) fn(base + c);
    done_.fetch_add(count, std::memory_order_acq_rel);
  }
}

void LoopPool::parallel_for(int64_t chunks, const std::function<void(int64_t)>& fn) {
  if (chunks <= 0) return;
  if (workers_.empty() || chunks == 1 || busy_.exchange(true, std::memory_order_acquire)) {
    for (int64_t c = 0; c < chunks; ++c) fn(c);
    return;
  }
  fn_.store(&fn, std::memory_order_relaxed);
  for (int64_t base = 0; base < chunks; base += kMaxChunksPerRound) {
    const int64_t n = std::min(kMaxChunksPerRound, chunks - base);
    base_.store(base, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint32_t generation = ++generation_;
    ticket_.store(make_ticket(generation, n), std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(mutex_); }
      wake_.notify_all();
    }
    run_chunks(generation);
    // Chunks a worker claimed may still be running.
    const auto spin_until = std::chrono::steady_clock::now() + kCallerSpinBeforeYield;
    for (int i = 0; done_.load(std::memory_order_acquire) < n; ++i) {
      if (i < 256 || std::chrono::steady_clock::now() < spin_until)
        cpu_relax();
      else
        sched_yield();  // the worker may be waiting for this core
    }
  }
  busy_.store(false, std::memory_order_release);
}

void LoopPool::worker_main() {
  uint32_t seen = 0;
  while (true) {
    // A new loop usually follows within microseconds: spin a little before blocking.
    const auto spin_until = std::chrono::steady_clock::now() + kWorkerSpin;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (int i = 0; generation_of(t) == seen && !stop_.load(std::memory_order_relaxed); ++i) {
      if (i % 64 == 63 && std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] {
          return stop_.load() || generation_of(ticket_.load(std::memory_order_seq_cst)) != seen;
        });
        sleeping_.fetch_sub(1, std::memory_order_seq_cst);
      } else {
        cpu_relax();
      }
      t = ticket_.load(std::memory_order_acquire);
    }
    if (stop_.load()) return;
    seen = generation_of(t);
    run_chunks(seen);
  }
}

int default_loop_threads() {
  int n = env_threads("RLHF_DECODE_THREADS");
  if (n == 0) n = env_threads("OPENBLAS_NUM_THREADS");
  if (n == 0) n = env_threads("OMP_NUM_THREADS");
  if (n == 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  return std::clamp(n, 1, 16);
}

LoopPool& shared_loop_pool() {
  static LoopPool pool(default_loop_threads());
  return pool;
}

}  // namespace rlhf

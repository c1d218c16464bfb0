// A small pool of worker threads that split loops with the calling thread, for hot loops that run
// thousands of times a second (a decoding step runs about 30 of them per token).
//
// Why not libtorch's intra-op pool or OpenMP: the processes of this project share their cores with
// each other (ctest -j2, the pipeline's server, several ranks), and a team of spinning threads
// that all have to arrive collapses when there are fewer free cores than threads (measured:
// two OpenMP processes on 2 cores each ran at 2-5% of their speed, docs/performance.md). Here the
// calling thread claims chunks too, from the same counter as the workers, so a loop finishes even
// when no worker gets a core: a worker that wakes late finds nothing left and goes back to sleep.
// Workers spin for a short while after a loop (the next one usually follows within microseconds)
// and then block, so an idle pool costs nothing.
//
// Which thread runs which chunk varies from run to run; callers that want reproducible results
// give every chunk its own outputs (no shared accumulation), as the decoding kernels do.
//
// It lives with the kernels it serves (its spin-wait is an x86 intrinsic, and every intrinsic is in
// policy/kernels/); it kept its namespace, rlhf, when it moved here from common/.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace rlhf {

class LoopPool {
 public:
  // threads >= 1 in all, the calling thread included (threads - 1 workers are started).
  explicit LoopPool(int threads);
  ~LoopPool();
  LoopPool(const LoopPool&) = delete;
  LoopPool& operator=(const LoopPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(chunk) exactly once for every chunk in [0, chunks), on this thread and the workers,
  // and returns when all calls have returned. Safe to call from several threads and from inside
  // fn: a loop that finds the pool busy runs all its chunks on the calling thread. fn must not
  // throw.
  void parallel_for(int64_t chunks, const std::function<void(int64_t)>& fn);

 private:
  // Claims the next chunks [*first, *first + *count) of loop `generation`: a share of what is
  // left (guided scheduling: large claims first, single chunks at the end), so a loop of many
  // small chunks costs a few claims on the shared word instead of one per chunk. False when that
  // loop has none left (or is over).
  bool claim(uint32_t generation, int64_t* first, int64_t* count);
  void run_chunks(uint32_t generation);
  void worker_main();

  // Bits 63..32: the loop's generation; 31..16: its chunk count (one round of at most 65,535);
  // 15..0: the next unclaimed chunk. One word, so a worker can never claim a chunk of a loop that
  // is over or of one that is still being set up.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};  // chunks of the current round that have returned (per claim)
  std::atomic<int64_t> base_{0};  // the round's first chunk
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  uint32_t generation_ = 0;        // the caller's count of rounds
  std::atomic<bool> busy_{false};  // a loop owns the ticket
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
};

// Threads for the process's own compute loops: RLHF_DECODE_THREADS if set, else
// OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS (so the ranks of a data-parallel run, which set both
// to 1, get one each), else the CPUs this process may run on; at most 16. A value that is not a
// positive integer is ignored.
int default_loop_threads();

// A process-wide pool of default_loop_threads() threads, started on first use.
LoopPool& shared_loop_pool();

}  // namespace rlhf

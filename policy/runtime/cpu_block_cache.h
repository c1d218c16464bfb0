// A CPU allocator for libtorch that keeps freed large blocks for reuse.
//
// Why: a training step allocates and frees the same large buffers every step (the [B, T, V]
// logits and their gradient, the [B, heads, T, T] attention scores and probabilities). glibc
// mmap()s every block above its mmap threshold (at most 32 MiB, common/allocator_tuning.h) and
// munmap()s it on free, so each step faults those pages in afresh and the kernel zeroes them:
// `rlhf bench`'s training step (d=256, 16 x 256 tokens) has 33.5 MB attention buffers and 67 MB
// logits, all above the threshold (docs/performance.md). This allocator serves blocks of at least
// kMinCachedBlock bytes from a cache of freed blocks of the same rounded size, and hands smaller
// requests to libtorch's default CPU allocator.
//
// Blocks are rounded up to 2 MiB, mapped with mmap() and advised as transparent huge pages (fewer
// faults the first time); a freed block is kept while the cache holds at most max_cached_bytes of
// free blocks, otherwise unmapped. Reuse is exact-size (after rounding), so the memory a process
// keeps is bounded by its peak use of large blocks plus max_cached_bytes.
//
// Thread safety: allocations, frees and cpu_block_cache_stats() may come from any thread (one
// mutex); install_cpu_block_cache() runs its installation once (std::call_once). Ownership: the
// cache and the allocator are never destroyed (tensors may be freed during static destruction).
// Errors: a large block that cannot be mapped throws c10::Error ("could not map N bytes"), as
// libtorch's own allocator does when memory runs out.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rlhf::policy {

inline constexpr size_t kMinCachedBlock = size_t(16) << 20;
inline constexpr size_t kDefaultMaxCachedBytes = size_t(1) << 30;

// Installs the allocator as libtorch's CPU allocator, process-wide, once (later calls return
// false and change nothing). Call early in main(), before tensors are shared between threads;
// tensors allocated before keep their own deleters. Does nothing (returns false) when the
// environment sets RLHF_CPU_BLOCK_CACHE=0.
bool install_cpu_block_cache(size_t max_cached_bytes = kDefaultMaxCachedBytes);

struct CpuBlockCacheStats {
  bool installed = false;
  int64_t hits = 0;          // large blocks served from the cache
  int64_t misses = 0;        // large blocks newly mapped
  int64_t cached_bytes = 0;  // free blocks held now
  int64_t live_bytes = 0;    // large blocks in use now
};
CpuBlockCacheStats cpu_block_cache_stats();

}  // namespace rlhf::policy

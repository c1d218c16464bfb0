// glibc malloc settings for training and decoding loops.
//
// A training step allocates and frees the same large activation buffers every step. With glibc's
// defaults, blocks above the mmap threshold are mmap()ed and munmap()ed each time, and free memory
// at the top of the heap is trimmed back to the kernel, so every step touches fresh pages again:
// measured on the quickstart's SFT step (d=128, 4 layers, 16 x 64 tokens, one thread), 139k minor
// page faults per 55 steps with the defaults and 48k with the settings below, and 10-25% less CPU
// time (docs/performance.md).
//
// Thread safety: call tune_allocator() once, from main() before other threads start (it reads
// the environment and changes process-wide malloc settings). Never throws.
#pragma once

namespace rlhf {

// What tune_allocator() sets (bytes).
inline constexpr long kMallocMmapThreshold = 32L << 20;  // glibc's largest allowed value
inline constexpr long kMallocTrimThreshold = 1L << 30;

// Call early in main(). Keeps blocks up to 32 MiB on the heap (no mmap/munmap per step) and keeps
// up to 1 GiB of free heap instead of trimming it. Does nothing when the user already tunes malloc
// (GLIBC_TUNABLES mentions malloc, or MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ is set), when
// RLHF_MALLOC_TUNE=0, or on a C library without mallopt. Returns whether it changed anything.
bool tune_allocator();

}  // namespace rlhf

// glibc malloc settings for training and decoding loops.
//
// A training step allocates and frees the same large activation buffers every step. With glibc's
// defaults, blocks above the mmap threshold are mmap()ed and munmap()ed each time, and free memory
// at the top of the heap is trimmed back to the kernel, so every step touches fresh pages again:
// measured on the quickstart's SFT step (d=128, 4 layers, 16 x 64 tokens, one thread), 139k minor
// page faults per 55 steps with the defaults and 48k with the settings below, and 10-25% less CPU
// time (docs/performance.md).
#pragma once

namespace rlhf {

// What tune_allocator() sets (bytes).
inline constexpr long kMallocMmapThreshold = 32L << 20;  // glibc's largest allowed value
inline constexpr long kMallocTrimThreshold = 1L << 30;

// Call early in main(). Serves every block from the heap (no mmap/munmap per allocation, also for
// blocks above 32 MiB, glibc's largest mmap threshold: M_MMAP_MAX = 0) and keeps up to 1 GiB of
// free heap instead of trimming it, so a step's buffers reuse pages that are already mapped.
// The cost: memory freed below the top of the heap is reused but not returned to the kernel, so a
// process's resident size stays near its peak. glibc still falls back to mmap when the heap
// cannot grow. Does nothing when the user already tunes malloc (GLIBC_TUNABLES mentions malloc,
// or MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_MAX_ is set), when
// RLHF_MALLOC_TUNE=0, or on a C library without mallopt. Returns whether it changed anything.
//
// Measured (docs/performance.md): `rlhf bench` training (d=256, 16 x 256 tokens, 64 MiB logits)
// had 2.0M minor page faults per run with the 32 MiB threshold alone and 0.63M with this.
bool tune_allocator();

}  // namespace rlhf

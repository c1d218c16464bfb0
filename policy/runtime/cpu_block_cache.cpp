#include "policy/runtime/cpu_block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

namespace rlhf::policy {

namespace {

constexpr size_t kRounding = size_t(2) << 20;  // a transparent huge page

size_t rounded(size_t n) { return (n + kRounding - 1) / kRounding * kRounding; }

void* map_block(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  ::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the block works the same
#endif
  return p;
}

// Free large blocks by rounded size, and the sizes of the large blocks in use.
class BlockCache {
 public:
  explicit BlockCache(size_t max_cached) : max_cached_(max_cached) {}

  void* take(size_t n) {
    const size_t bytes = rounded(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= bytes;
        live_[p] = bytes;
        live_bytes_ += bytes;
        ++hits_;
        return p;
      }
    }
    void* p = map_block(bytes);
    if (!p) {  // out of address space or memory: give back the cache and try once more
      release_cached();
      p = map_block(bytes);
    }
    TORCH_CHECK(p, "CPU block cache: could not map ", bytes, " bytes: ", std::strerror(errno));
    std::lock_guard<std::mutex> lock(mu_);
    live_[p] = bytes;
    live_bytes_ += bytes;
    ++misses_;
    return p;
  }

  // False when `p` is not a large block of this cache.
  bool give(void* p) {
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it == live_.end()) return false;
      bytes = it->second;
      live_.erase(it);
      live_bytes_ -= bytes;
      if (cached_ + bytes <= max_cached_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return true;
      }
    }
    ::munmap(p, bytes);
    return true;
  }

  CpuBlockCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    CpuBlockCacheStats s;
    s.installed = true;
    s.hits = hits_;
    s.misses = misses_;
    s.cached_bytes = static_cast<int64_t>(cached_);
    s.live_bytes = static_cast<int64_t>(live_bytes_);
    return s;
  }

 private:
  void release_cached() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (const auto& [bytes, p] : blocks) ::munmap(p, bytes);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> live_;
  const size_t max_cached_;
  size_t cached_ = 0, live_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may be freed during static destruction.
BlockCache* g_cache = nullptr;
std::once_flag g_install_once;

void free_any(void* p) {
  if (!g_cache->give(p)) c10::free_cpu(p);
}

// Small requests: c10::alloc_cpu, as libtorch's default CPU allocator (64-byte aligned). One
// deleter for both kinds, so raw_allocate/raw_deallocate work too.
// libtorch 2.3 made allocate() non-const and added copy_data() (pure virtual).
class CachingCpuAllocator final : public c10::Allocator {
 public:
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(size_t n) override { return take(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
#else
  c10::DataPtr allocate(size_t n) const override { return take(n); }
#endif
  c10::DeleterFnPtr raw_deleter() const override { return &free_any; }

 private:
  static c10::DataPtr take(size_t n) {
    void* p = n >= kMinCachedBlock ? g_cache->take(n) : c10::alloc_cpu(n);
    return {p, p, &free_any, c10::Device(c10::DeviceType::CPU)};
  }
};

}  // namespace

bool install_cpu_block_cache(size_t max_cached_bytes) {
  const char* off = std::getenv("RLHF_CPU_BLOCK_CACHE");
  if (off && std::strcmp(off, "0") == 0) return false;
  bool installed = false;
  std::call_once(g_install_once, [&] {
    g_cache = new BlockCache(max_cached_bytes);
    c10::SetCPUAllocator(new CachingCpuAllocator(), /*priority=*/1);  // never destroyed either
    installed = true;
  });
  return installed;
}

CpuBlockCacheStats cpu_block_cache_stats() {
  return g_cache ? g_cache->stats() : CpuBlockCacheStats{};
}

}  // namespace rlhf::policy

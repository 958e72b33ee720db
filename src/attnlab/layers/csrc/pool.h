// A caching allocator for the full-size tensors the fused kernels write (a gate's output, the
// input gradient).
//
// A freshly allocated multi-megabyte tensor is fresh pages: glibc returns large freed blocks to
// the system (munmap, or trimming the heap top), so the next allocation of the same size faults
// every 4 KiB page in again and the kernel zeroes it, which costs more than the gate's own
// arithmetic (measured: ~2 µs per page fault here, ~4.5 ms per CBAM forward+backward on an
// 8×256×40×40 map against ~1 ms of kernels). Here a freed block of one of these tensors goes back
// to a per-size free list and the next tensor of that size reuses it, pages already mapped.
// Blocks of 2 MiB and more are 2 MiB-aligned and advised as transparent huge pages.
//
// Only memory is reused, never contents: every kernel writes every element of its output.
// The cache holds at most `limit` bytes of free blocks (ATTNLAB_CACHE_MB, default 512; 0 turns
// the cache off); pool_empty() releases them all. Blocks below kMinPooled bytes use PyTorch's
// allocator as usual. Thread-safe: tensors may die on any thread.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinPooled = size_t(1) << 18;  // 256 KiB
constexpr size_t kHuge = size_t(1) << 21;       // 2 MiB

class BlockPool final : public c10::Allocator {
 public:
  BlockPool() {
    const char* env = std::getenv("ATTNLAB_CACHE_MB");
    limit_ = (env && *env ? size_t(std::strtoull(env, nullptr, 10)) : size_t(512)) << 20;
  }

  c10::DataPtr allocate(size_t n) override {
    n = (n + 4095) / 4096 * 4096;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(n);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached_ -= n;
      }
    }
    if (!p) {
      if (posix_memalign(&p, n >= kHuge ? kHuge : 64, n) != 0) p = nullptr;
      TORCH_CHECK(p, "attnlab_fast: out of memory allocating ", n, " bytes");
#ifdef MADV_HUGEPAGE
      if (n >= kHuge) madvise(p, n, MADV_HUGEPAGE);
#endif
    }
    return {p, new Block{p, n}, &BlockPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& kv : free_)
      for (void* p : kv.second) std::free(p);
    free_.clear();
    cached_ = 0;
  }

  static BlockPool& get() {
    static BlockPool* pool = new BlockPool();  // never destroyed: tensors may outlive statics
    return *pool;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    get().give(block->ptr, block->size);
    delete block;
  }

  void give(void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + n <= limit_) {
        free_[n].push_back(p);
        cached_ += n;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  size_t limit_;
};

// empty_like(x) (same sizes, dtype and layout) from the pool when it is large enough.
at::Tensor pooled_empty_like(const at::Tensor& x) {
  const size_t bytes = size_t(x.numel()) * x.element_size();
  if (bytes < kMinPooled) return at::empty_like(x);
  const auto format = x.is_contiguous() ? c10::MemoryFormat::Contiguous
                      : x.is_contiguous(c10::MemoryFormat::ChannelsLast)
                          ? c10::MemoryFormat::ChannelsLast
                          : c10::MemoryFormat::Contiguous;
  return at::detail::empty_generic(x.sizes(), &BlockPool::get(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU), x.scalar_type(),
                                   format);
}

int64_t pool_cached() { return int64_t(BlockPool::get().cached()); }

void pool_empty() { BlockPool::get().empty(); }

}  // namespace

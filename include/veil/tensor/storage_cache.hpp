// Storage cache: large buffers freed by tensors are kept for the next tensor of about the same
// size instead of going back to the kernel.
//
// Why: glibc returns blocks of more than a few MiB to the kernel on free, so a new tensor of that
// size starts as page faults, each of which zeroes a fresh page before the op can write it. A
// training step allocates the same activations every iteration; in nanoGPT's GPU configuration
// zeroing fresh pages took a third of the step (8.6 s -> 5.6 s with the cache). (PyTorch's CUDA
// caching allocator keeps freed blocks for the same reason; its CPU allocator does not.)
//
// Policy: blocks of at least `min_cached_bytes` go into the cache when freed, most recently freed
// last; when the cache would exceed its limit the blocks freed longest ago go back to the system.
// An allocation takes the smallest cached block that holds it and is at most 1/8 larger, so a
// cached block never wastes much. Default limit: a quarter of physical memory (1 GiB where that is
// unknown); `set_storage_cache_limit(0)` turns caching off and `release_cached_storage()` empties
// the cache. Thread-safe: one mutex, taken only for large blocks, which cost far more to fill.
// Under AddressSanitizer cached blocks are poisoned, so a read after free is still reported.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <list>
#include <mutex>

#if defined(__unix__)
#include <unistd.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define VEIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VEIL_ASAN 1
#endif
#endif
#ifdef VEIL_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace veil {

/// Smallest block the cache keeps; smaller ones are glibc's business (it reuses them well).
inline constexpr std::size_t min_cached_bytes = std::size_t{1} << 20;

namespace detail {

class StorageCache {
 public:
  /// The process-wide cache. Never destroyed: tensors held by static objects may be freed after
  /// any destructor of this one would have run.
  static StorageCache& instance() {
    static StorageCache* const cache = new StorageCache();
    return *cache;
  }

  /// A cached block of `bytes` to `bytes + bytes / 8` bytes (its size in `capacity`), or nullptr.
  void* take(std::size_t bytes, std::size_t& capacity) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto best = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (it->bytes >= bytes && it->bytes <= bytes + bytes / 8 && (best == blocks_.end() || it->bytes < best->bytes)) best = it;
    if (best == blocks_.end()) return nullptr;
    void* const data = best->data;
    capacity = best->bytes;
    cached_bytes_ -= best->bytes;
    blocks_.erase(best);
#ifdef VEIL_ASAN
    ASAN_UNPOISON_MEMORY_REGION(data, capacity);
#endif
    return data;
  }

  /// Keeps `data` (from std::aligned_alloc, `capacity` bytes) for reuse, or frees it when it
  /// alone exceeds the limit; frees the blocks cached longest ago to stay within the limit.
  void give(void* data, std::size_t capacity) {
    std::list<Block> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (capacity > limit_) {
        evicted.push_back({data, capacity});
      } else {
#ifdef VEIL_ASAN
        ASAN_POISON_MEMORY_REGION(data, capacity);
#endif
        blocks_.push_back({data, capacity});
        cached_bytes_ += capacity;
        shrink_to(limit_, evicted);
      }
    }
    free_all(evicted);  // outside the lock: returning memory to the kernel is the slow part
  }

  void set_limit(std::size_t bytes) {
    std::list<Block> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      shrink_to(limit_, evicted);
    }
    free_all(evicted);
  }
  std::size_t limit() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  std::size_t cached_bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }
  void release() {
    std::list<Block> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      shrink_to(0, evicted);
    }
    free_all(evicted);
  }

 private:
  struct Block {
    void* data;
    std::size_t bytes;
  };

  StorageCache() : limit_(default_limit()) {}

  static std::size_t default_limit() {
#if defined(__unix__) && defined(_SC_PHYS_PAGES)
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) return static_cast<std::size_t>(pages) / 4 * static_cast<std::size_t>(page_size);
#endif
    return std::size_t{1} << 30;
  }

  void shrink_to(std::size_t bytes, std::list<Block>& evicted) {
    while (cached_bytes_ > bytes) {
      cached_bytes_ -= blocks_.front().bytes;
      evicted.splice(evicted.end(), blocks_, blocks_.begin());
    }
  }

  static void free_all(std::list<Block>& blocks) {
    for (const Block& block : blocks) {
#ifdef VEIL_ASAN
      ASAN_UNPOISON_MEMORY_REGION(block.data, block.bytes);
#endif
      std::free(block.data);
    }
  }

  std::mutex mutex_;
  std::list<Block> blocks_;  // oldest first
  std::size_t cached_bytes_ = 0;
  std::size_t limit_;
};

}  // namespace detail

/// At most `bytes` of freed tensor storage are kept for reuse (0: none); shrinks the cache now.
inline void set_storage_cache_limit(std::size_t bytes) { detail::StorageCache::instance().set_limit(bytes); }
/// The current limit in bytes.
inline std::size_t storage_cache_limit() { return detail::StorageCache::instance().limit(); }
/// Bytes held in the cache right now (not counting storage in use).
inline std::size_t cached_storage_bytes() { return detail::StorageCache::instance().cached_bytes(); }
/// Returns every cached block to the system, e.g. after training and before a memory-hungry phase.
inline void release_cached_storage() { detail::StorageCache::instance().release(); }

}  // namespace veil

// Storage: a reference-counted, 64-byte-aligned buffer of T. It knows its length, not shapes.
#pragma once

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "veil/core/check.hpp"
#include "veil/core/types.hpp"
#include "veil/tensor/storage_cache.hpp"

namespace veil {

template <class T>
class Storage {
 public:
  static constexpr std::size_t alignment = 64;
  /// Buffers from this size up are placed on 2 MiB boundaries and marked for transparent huge
  /// pages: a fresh block starts as page faults (see storage_cache.hpp), and one 2 MiB fault
  /// costs far less than 512 of 4 KiB. Freed large blocks are kept in the storage cache.
  static constexpr std::size_t huge_page_threshold = std::size_t{16} << 20;
  static constexpr std::size_t huge_page = std::size_t{2} << 20;

  /// Uninitialised storage for `size` elements. With VEIL_DEBUG_NAN_FILL defined, floating-point
  /// storage starts as NaN so any read of an element never written shows up in results.
  explicit Storage(Index size) : size_(size) {
    if (size == 0) return;
    VEIL_CHECK(size > 0 && static_cast<std::size_t>(size) <= std::numeric_limits<std::size_t>::max() / sizeof(T) / 2,
               ValueError, "Storage: cannot allocate ", size, " elements");
    const std::size_t raw = static_cast<std::size_t>(size) * sizeof(T);
    cached_ = raw >= min_cached_bytes;
    if (cached_) {
      // Page-rounded so that blocks of nearly equal size are interchangeable in the cache.
      const std::size_t wanted = (raw + 4095) / 4096 * 4096;
      data_ = static_cast<T*>(detail::StorageCache::instance().take(wanted, capacity_));
    }
    if (data_ == nullptr) allocate(raw);
#ifdef VEIL_DEBUG_NAN_FILL
    if constexpr (std::is_floating_point_v<T>) {
      for (Index i = 0; i < size; ++i) data_[i] = std::numeric_limits<T>::quiet_NaN();
    } else {
      std::memset(static_cast<void*>(data_), 0xA5, static_cast<std::size_t>(size) * sizeof(T));
    }
#endif
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (cached_)
      detail::StorageCache::instance().give(static_cast<void*>(data_), capacity_);
    else
      std::free(data_);
  }

  T* data() const { return data_; }
  Index size() const { return size_; }

 private:
  void allocate(std::size_t raw) {
    const std::size_t align = raw >= huge_page_threshold ? huge_page : alignment;
    capacity_ = (raw + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, capacity_));
    if (data_ == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == huge_page) madvise(static_cast<void*>(data_), capacity_, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  }

  T* data_ = nullptr;
  Index size_ = 0;
  std::size_t capacity_ = 0;  // bytes allocated, at least size_ * sizeof(T)
  bool cached_ = false;       // large enough for the storage cache: freed into it
};

}  // namespace veil

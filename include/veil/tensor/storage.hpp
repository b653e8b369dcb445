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

namespace veil {

template <class T>
class Storage {
 public:
  static constexpr std::size_t alignment = 64;
  /// Buffers from this size up are placed on 2 MiB boundaries and marked for transparent huge
  /// pages: glibc returns such blocks to the kernel on free, so each new one would otherwise
  /// start as thousands of 4 KiB page faults, which cost more than the elementwise op writing it.
  static constexpr std::size_t huge_page_threshold = std::size_t{16} << 20;
  static constexpr std::size_t huge_page = std::size_t{2} << 20;

  /// Uninitialised storage for `size` elements. With VEIL_DEBUG_NAN_FILL defined, floating-point
  /// storage starts as NaN so any read of an element never written shows up in results.
  explicit Storage(Index size) : size_(size) {
    if (size == 0) return;
    VEIL_CHECK(size > 0 && static_cast<std::size_t>(size) <= std::numeric_limits<std::size_t>::max() / sizeof(T) / 2,
               ValueError, "Storage: cannot allocate ", size, " elements");
    const std::size_t raw = static_cast<std::size_t>(size) * sizeof(T);
    const std::size_t align = raw >= huge_page_threshold ? huge_page : alignment;
    const std::size_t bytes = (raw + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, bytes));
    if (data_ == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == huge_page) madvise(static_cast<void*>(data_), bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
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
  ~Storage() { std::free(data_); }

  T* data() const { return data_; }
  Index size() const { return size_; }

 private:
  T* data_ = nullptr;
  Index size_ = 0;
};

}  // namespace veil

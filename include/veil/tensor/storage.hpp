// Storage: a reference-counted, 64-byte-aligned buffer of T. It knows its length, not shapes.
#pragma once

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#include "veil/core/check.hpp"
#include "veil/core/types.hpp"

namespace veil {

template <class T>
class Storage {
 public:
  static constexpr std::size_t alignment = 64;

  /// Uninitialised storage for `size` elements. With VEIL_DEBUG_NAN_FILL defined, floating-point
  /// storage starts as NaN so any read of an element never written shows up in results.
  explicit Storage(Index size) : size_(size) {
    if (size == 0) return;
    VEIL_CHECK(size > 0 && static_cast<std::size_t>(size) <= std::numeric_limits<std::size_t>::max() / sizeof(T) / 2,
               ValueError, "Storage: cannot allocate ", size, " elements");
    const std::size_t bytes = (static_cast<std::size_t>(size) * sizeof(T) + alignment - 1) / alignment * alignment;
    data_ = static_cast<T*>(std::aligned_alloc(alignment, bytes));
    if (data_ == nullptr) throw std::bad_alloc();
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

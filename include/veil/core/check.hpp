// VEIL_CHECK: argument validation at the API boundary. Always on (also in Release), because bad
// input must give a typed error, never UB. Kernels use VEIL_DEBUG_ASSERT for internal invariants.
#pragma once

#include <cassert>
#include <sstream>
#include <string>
#include <utility>

#include "veil/core/error.hpp"

namespace veil::detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <class ErrorType, class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw ErrorType(concat(std::forward<Parts>(parts)...));
}

}  // namespace veil::detail

/// Throws ErrorType(message parts concatenated) unless cond holds.
#define VEIL_CHECK(cond, ErrorType, ...)                          \
  do {                                                            \
    if (!(cond)) [[unlikely]] ::veil::detail::fail<ErrorType>(__VA_ARGS__); \
  } while (false)

#define VEIL_DEBUG_ASSERT(cond) assert(cond)

// IWYU pragma: private
// Row-wise iteration over N strided operands that share one (broadcast) shape. The innermost
// dimension becomes a plain counted loop the compiler can vectorise; the outer dimensions are
// walked with an odometer. Rows are split across threads by parallel_for, each chunk computing
// its own starting odometer, so every output element is written by exactly one thread.
#pragma once

#include <array>

#include "veil/core/parallel.hpp"
#include "veil/core/types.hpp"

namespace veil::detail {

/// Calls fn(offsets, inner_count, inner_strides) once per row of `shape`, where offsets[k] is
/// operand k's element offset at the row start. strides[k] are operand k's strides over `shape`.
template <std::size_t N, class Fn>
void for_each_row(const Shape& shape, const std::array<Shape, N>& strides, const std::array<Index, N>& base,
                  Index grain_elements, Fn&& fn) {
  const Index rank = static_cast<Index>(shape.size());
  Index count = 1;
  for (Index extent : shape) count *= extent;
  if (count == 0) return;
  if (rank == 0) {
    fn(base, Index{1}, std::array<Index, N>{});
    return;
  }
  const Index inner = shape[rank - 1];
  std::array<Index, N> inner_strides;
  for (std::size_t k = 0; k < N; ++k) inner_strides[k] = strides[k][rank - 1];
  const Index rows = count / inner;
  const Index grain_rows = std::max<Index>(1, grain_elements / std::max<Index>(inner, 1));
  parallel_for(0, rows, grain_rows, [&](Index first_row, Index last_row) {
    Shape index(static_cast<std::size_t>(rank - 1), 0);
    std::array<Index, N> offsets = base;
    Index rest = first_row;
    for (Index d = rank - 2; d >= 0; --d) {
      index[d] = rest % shape[d];
      rest /= shape[d];
      for (std::size_t k = 0; k < N; ++k) offsets[k] += index[d] * strides[k][d];
    }
    for (Index row = first_row; row < last_row; ++row) {
      fn(offsets, inner, inner_strides);
      for (Index d = rank - 2; d >= 0; --d) {
        if (++index[d] < shape[d]) {
          for (std::size_t k = 0; k < N; ++k) offsets[k] += strides[k][d];
          break;
        }
        for (std::size_t k = 0; k < N; ++k) offsets[k] -= strides[k][d] * (shape[d] - 1);
        index[d] = 0;
      }
    }
  });
}

}  // namespace veil::detail

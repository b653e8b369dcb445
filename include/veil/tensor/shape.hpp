// Shape arithmetic: extents, row-major strides, element counts, broadcasting, dimension wrapping.
// Pure functions on Shape values; no data.
#pragma once

#include <limits>
#include <sstream>
#include <string>

#include "veil/core/check.hpp"
#include "veil/core/types.hpp"

namespace veil {

/// "[2, 3, 4]": the spelling every shape takes in an error message.
inline std::string to_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < shape.size(); ++d) out << (d ? ", " : "") << shape[d];
  out << ']';
  return out.str();
}

/// Product of the extents; throws ShapeError on a negative extent or on overflow.
inline Index numel_of(const Shape& shape) {
  Index count = 1;
  for (Index extent : shape) {
    VEIL_CHECK(extent >= 0, ShapeError, "shape: extents must be >= 0, got ", to_string(shape));
    if (extent != 0 && count > std::numeric_limits<Index>::max() / extent)
      detail::fail<ShapeError>("shape: element count of ", to_string(shape), " overflows 64 bits");
    count *= extent;
  }
  return count;
}

/// Row-major strides of a contiguous tensor of this shape.
inline Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  Index stride = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= std::max<Index>(shape[d], 1);
  }
  return strides;
}

/// Maps a possibly negative dimension (-1 = last) into [0, rank); names `argument` when it is out of range.
inline Index wrap_dim(Index dim, Index rank, const char* argument = "dim") {
  const Index lowest = rank == 0 ? -1 : -rank;
  const Index highest = rank == 0 ? 0 : rank - 1;
  VEIL_CHECK(dim >= lowest && dim <= highest, ValueError, argument, ": expected a dimension in [", lowest, ", ",
             highest, "] for a tensor of rank ", rank, ", got ", dim);
  return dim < 0 ? dim + std::max<Index>(rank, 1) : dim;
}

/// NumPy broadcasting: aligns trailing dimensions; each pair must be equal or contain a 1.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op = "broadcast") {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    const Index ea = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const Index eb = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    VEIL_CHECK(ea == eb || ea == 1 || eb == 1, ShapeError, op, ": shapes ", to_string(a), " and ", to_string(b),
               " do not broadcast (dimension ", i, ": ", ea, " vs ", eb, ")");
    out[i] = ea == 1 ? eb : ea;
  }
  return out;
}

/// Strides that read a tensor of (shape, strides) as if it had shape `target` (stride 0 on broadcast dims).
inline Shape broadcast_strides(const Shape& shape, const Shape& strides, const Shape& target) {
  Shape out(target.size(), 0);
  const std::size_t lead = target.size() - shape.size();
  for (std::size_t d = 0; d < shape.size(); ++d)
    out[lead + d] = shape[d] == 1 && target[lead + d] != 1 ? 0 : strides[d];
  return out;
}

}  // namespace veil

// One integer type for every size, extent, stride and count: no int/size_t mixing.
#pragma once

#include <cstdint>
#include <vector>

namespace veil {

using Index = std::int64_t;
/// Extents of a tensor, outermost first (row-major).
using Shape = std::vector<Index>;

}  // namespace veil

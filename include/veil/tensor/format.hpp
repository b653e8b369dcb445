// operator<<: the shape header, then the values, nested by dimension. Long dimensions are elided.
#pragma once

#include <ostream>
#include <type_traits>

#include "veil/tensor/tensor.hpp"

namespace veil {

namespace detail {

template <class T>
void print_values(std::ostream& out, const Tensor<T>& t, Index dim, Index position, int indent) {
  constexpr Index edge = 3;  // elements shown at each end of a long dimension
  const Index extent = t.shape()[dim];
  const bool last = dim + 1 == t.dim();
  out << '[';
  for (Index i = 0; i < extent; ++i) {
    if (extent > 2 * edge + 1 && i == edge) {
      out << (last ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      i = extent - edge - 1;
      continue;
    }
    const Index at = position + i * t.strides()[dim];
    if (last) {
      const T value = t.storage()->data()[at];
      if constexpr (std::is_same_v<T, bool>) out << (value ? "true" : "false");
      else out << +value;
    } else {
      print_values(out, t, dim + 1, at, indent + 1);
    }
    if (i + 1 < extent) out << (last ? ", " : ",\n" + std::string(indent + 1, ' '));
  }
  out << ']';
}

}  // namespace detail

template <class T>
std::ostream& operator<<(std::ostream& out, const Tensor<T>& t) {
  if (!t.defined()) return out << "Tensor(undefined)";
  out << "Tensor" << to_string(t.shape()) << (t.requires_grad() ? " requires_grad" : "") << '\n';
  if (t.numel() == 0) return out << "[]";
  if (t.dim() == 0) {
    if constexpr (std::is_same_v<T, bool>) return out << (t.item() ? "true" : "false");
    else return out << +t.item();
  }
  detail::print_values(out, t, 0, t.offset(), 0);
  return out;
}

}  // namespace veil

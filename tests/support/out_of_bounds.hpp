// Out-of-bounds canaries (xformers' nanify_oob_seqlen): a tensor's values placed as a view inside
// a larger buffer whose every other element is a poison value (NaN, or a huge finite number that
// a max() cannot ignore). A kernel that reads one element past a row, a tile or the tensor then
// changes an output or a gradient, where a clean run would hide the read.
#pragma once

#include <bit>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <veil/veil.hpp>

namespace veil_test {

enum class Layout {
  prefix,   // contiguous at the start of the buffer: poison after the logical end
  window,   // contiguous at an odd offset: poison before and after
  strided,  // every dimension padded on both sides: poison between rows, heads and batches too
};

inline std::string layout_name(Layout layout) {
  switch (layout) {
    case Layout::prefix: return "prefix";
    case Layout::window: return "window";
    case Layout::strided: return "strided";
  }
  return "?";
}

inline const std::vector<Layout>& all_layouts() {
  static const std::vector<Layout> layouts{Layout::prefix, Layout::window, Layout::strided};
  return layouts;
}

/// A view holding `values` inside a fresh buffer otherwise filled with `poison`. The last
/// dimension keeps stride 1 (kernels read such views in place instead of copying them).
template <class T>
veil::Tensor<T> poisoned_view(const veil::Tensor<T>& values, Layout layout, T poison) {
  const veil::Shape& shape = values.shape();
  veil::Tensor<T> view;
  if (layout == Layout::strided) {
    // Dimension d gets 1 + d % 2 poison entries before and 2 after: the gaps differ per dimension.
    veil::Shape padded = shape;
    for (std::size_t d = 0; d < shape.size(); ++d) padded[d] += 3 + static_cast<veil::Index>(d % 2);
    view = veil::full<T>(padded, poison);
    for (std::size_t d = 0; d < shape.size(); ++d)
      view = veil::narrow(view, static_cast<veil::Index>(d), 1 + static_cast<veil::Index>(d % 2), shape[d]);
  } else {
    const veil::Index offset = layout == Layout::prefix ? 0 : 37, numel = values.numel();
    const veil::Tensor<T> buffer = veil::full<T>({offset + numel + 61}, poison);
    view = veil::narrow(buffer, 0, offset, numel).reshape(shape);
  }
  veil::detail::copy_into(view, values);
  return view;
}

/// Bit patterns, so that -0 vs +0 and different NaNs count as differences.
template <class T>
std::vector<std::uint64_t> bits_of(const veil::Tensor<T>& t) {
  std::vector<std::uint64_t> out;
  for (T value : t.to_vector()) {
    if constexpr (std::is_same_v<T, float>) {
      out.push_back(std::bit_cast<std::uint32_t>(value));
    } else {
      out.push_back(std::bit_cast<std::uint64_t>(value));
    }
  }
  return out;
}

/// Output and input gradients of fn, as bit patterns.
struct Bits {
  std::vector<std::uint64_t> out;
  std::vector<std::vector<std::uint64_t>> grads;  // one per input; empty when none reached it
};

template <class T>
using TensorFunction = std::function<veil::Tensor<T>(const std::vector<veil::Tensor<T>>&)>;

/// fn on leaves sharing the inputs' storage and geometry (views stay views), then backward with
/// `grad_out` (which may itself be a view).
template <class T>
Bits run_bits(const TensorFunction<T>& fn, const std::vector<veil::Tensor<T>>& inputs,
              const veil::Tensor<T>& grad_out) {
  std::vector<veil::Tensor<T>> leaves;
  for (const auto& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
  const veil::Tensor<T> y = fn(leaves);
  y.backward(grad_out);
  Bits bits{bits_of(y), {}};
  for (const auto& leaf : leaves)
    bits.grads.push_back(leaf.grad().defined() ? bits_of(leaf.grad()) : std::vector<std::uint64_t>{});
  return bits;
}

}  // namespace veil_test

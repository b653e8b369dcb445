// Inverted dropout with an explicit Generator: each element is kept with probability 1 - p and
// scaled by 1/(1 - p), so the expected value is unchanged and evaluation needs no rescaling.
//
// The keep decision of element i (row-major position) is a pure function of the generator's seed
// and counter + i, so the mask does not depend on the thread count or on x's strides, and the
// backward regenerates it from (seed, first counter) instead of storing it. A dropped element is
// selected to exactly 0, not multiplied by 0, so a NaN or inf there does not survive (PyTorch's
// x * mask would keep the NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "veil/autograd/node.hpp"
#include "veil/tensor/creation.hpp"

namespace veil {

namespace detail {

/// True when element `i` of the block of draws starting at counter `first` is kept, that is when
/// its uniform draw is at least p (threshold = unit_threshold(p)).
inline bool dropout_keeps(std::uint64_t seed, std::uint64_t first, Index i, std::uint64_t threshold) {
  return (random_bits(seed, first + static_cast<std::uint64_t>(i)) >> 11) >= threshold;
}

/// x: [n] contiguous  ->  y: [n];  y_i = keep_i ? x_i * scale : 0.
template <class T>
void dropout_forward(const T* x, T* y, Index count, std::uint64_t seed, std::uint64_t first, double p, T scale) {
  const std::uint64_t threshold = unit_threshold(p);
  parallel_for(0, count, elementwise_grain, [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i) y[i] = dropout_keeps(seed, first, i, threshold) ? x[i] * scale : T(0);
  });
}

/// dy: [n] contiguous  ->  dx: [n];  dx_i = keep_i ? dy_i * scale : 0, with the forward's mask.
template <class T>
void dropout_backward(const T* dy, T* dx, Index count, std::uint64_t seed, std::uint64_t first, double p, T scale) {
  dropout_forward(dy, dx, count, seed, first, p, scale);
}

}  // namespace detail

/// Zeroes each element of x with probability p and scales the others by 1/(1 - p), drawing the
/// mask from `generator` (which advances by x.numel() counters). Returns x itself when
/// !training or p == 0. p must lie in [0, 1).
template <class T>
Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& generator) {
  static_assert(std::is_floating_point_v<T>, "dropout: T must be float or double");
  VEIL_CHECK(p >= 0.0 && p < 1.0, ValueError, "dropout: p must be in [0, 1), got p = ", p);
  if (!training || p == 0.0) return x;

  const Tensor<T> source = x.is_contiguous() ? x : detail::copy_contiguous(x);
  const Index count = source.numel();
  const std::uint64_t seed = generator.seed();
  const std::uint64_t first = generator.reserve(count);
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  Tensor<T> out = Tensor<T>::empty(x.shape());
  detail::dropout_forward(source.data(), out.data(), count, seed, first, p, scale);

  return autograd::record<T>("dropout", out, {&x}, [seed, first, p, scale](const Tensor<T>& grad_output) {
    const Tensor<T> dy = grad_output.is_contiguous() ? grad_output : detail::copy_contiguous(grad_output);
    Tensor<T> dx = Tensor<T>::empty(dy.shape());
    detail::dropout_backward(dy.data(), dx.data(), dy.numel(), seed, first, p, scale);
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace veil

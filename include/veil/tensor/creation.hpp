// Factories. Random ones take an explicit Generator; fills are parallel and do not depend on the
// thread count (each element draws from its own counter).
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "veil/core/parallel.hpp"
#include "veil/detail/strided_loop.hpp"
#include "veil/tensor/random.hpp"
#include "veil/tensor/tensor.hpp"

namespace veil {

namespace detail {

inline constexpr Index elementwise_grain = 1 << 15;

/// A fresh contiguous copy of t's elements (no autograd history).
template <class T>
Tensor<T> copy_contiguous(const Tensor<T>& t) {
  Tensor<T> out = Tensor<T>::empty(t.shape());
  T* dst = out.data();
  if (t.is_contiguous()) {
    const T* src = t.data();
    parallel_for(0, t.numel(), elementwise_grain, [&](Index begin, Index end) {
      std::copy(src + begin, src + end, dst + begin);
    });
    return out;
  }
  const T* base = t.storage()->data();
  for_each_row<2>(t.shape(), {out.strides(), t.strides()}, {0, t.offset()}, elementwise_grain,
                  [&](const std::array<Index, 2>& at, Index count, const std::array<Index, 2>& step) {
                    const T* from = base + at[1];
                    T* to = dst + at[0];
                    if (step[1] == 1) std::copy(from, from + count, to);
                    else for (Index i = 0; i < count; ++i) to[i] = from[i * step[1]];
                  });
  return out;
}

template <class T, class Fn>
Tensor<T> generate(const Shape& shape, Fn&& value_at) {
  Tensor<T> out = Tensor<T>::empty(shape);
  T* dst = out.data();
  parallel_for(0, out.numel(), elementwise_grain, [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i) dst[i] = value_at(i);
  });
  return out;
}

}  // namespace detail

template <class T>
Tensor<T> full(const Shape& shape, T value) {
  return detail::generate<T>(shape, [value](Index) { return value; });
}
template <class T>
Tensor<T> zeros(const Shape& shape) { return full<T>(shape, T(0)); }
template <class T>
Tensor<T> ones(const Shape& shape) { return full<T>(shape, T(1)); }
/// Uninitialised contiguous tensor.
template <class T>
Tensor<T> empty(const Shape& shape) { return Tensor<T>::empty(shape); }

/// [start, start + step, ...) up to but excluding end: a 1-d tensor.
template <class T>
Tensor<T> arange(T start, T end, T step = T(1)) {
  VEIL_CHECK(step != T(0), ValueError, "arange: step must be non-zero, got 0");
  const double span = (static_cast<double>(end) - static_cast<double>(start)) / static_cast<double>(step);
  const Index count = span > 0 ? static_cast<Index>(std::ceil(span)) : 0;
  return detail::generate<T>({count}, [start, step](Index i) { return static_cast<T>(start + static_cast<T>(i) * step); });
}
template <class T>
Tensor<T> arange(T end) { return arange<T>(T(0), end, T(1)); }

/// Standard normal samples scaled by `stddev` and shifted by `mean`.
template <class T>
Tensor<T> randn(const Shape& shape, Generator& generator, T mean = T(0), T stddev = T(1)) {
  static_assert(std::is_floating_point_v<T>, "randn: T must be float or double");
  const std::uint64_t seed = generator.seed();
  // Box-Muller takes two uniforms per value: value i uses counters first + 2i and first + 2i + 1,
  // all reserved here, so a later draw from the generator never reuses them.
  const Index count = numel_of(shape);
  const std::uint64_t first = generator.reserve(count);
  generator.reserve(count);
  return detail::generate<T>(shape, [=](Index i) {
    return static_cast<T>(mean + stddev * detail::normal_from(seed, first + 2 * static_cast<std::uint64_t>(i)));
  });
}

/// Uniform samples in [low, high).
template <class T>
Tensor<T> rand(const Shape& shape, Generator& generator, T low = T(0), T high = T(1)) {
  static_assert(std::is_floating_point_v<T>, "rand: T must be float or double");
  VEIL_CHECK(low <= high, ValueError, "rand: expected low <= high, got low = ", low, ", high = ", high);
  const std::uint64_t seed = generator.seed();
  const std::uint64_t first = generator.reserve(numel_of(shape));
  // u < 1, but low + (high - low) u can still round up to high (in float from u > 1 - 2^-25):
  // such a draw becomes the largest value below high, so the interval stays half-open.
  const T below_high = std::nextafter(high, low);
  return detail::generate<T>(shape, [=](Index i) {
    const T value = static_cast<T>(low + (high - low) * detail::bits_to_unit(detail::random_bits(seed, first + i)));
    return value < high ? value : below_high;
  });
}

/// Integers uniform in [low, high).
template <class T = std::int64_t>
Tensor<T> randint(const Shape& shape, Generator& generator, T low, T high) {
  VEIL_CHECK(high > low, ValueError, "randint: expected high > low, got low = ", low, ", high = ", high);
  const std::uint64_t seed = generator.seed();
  const std::uint64_t first = generator.reserve(numel_of(shape));
  const auto range = static_cast<std::uint64_t>(high - low);
  return detail::generate<T>(shape, [=](Index i) {
    return static_cast<T>(low + static_cast<T>(detail::random_bits(seed, first + i) % range));
  });
}

/// A contiguous tensor holding `values` in row-major order; `shape` defaults to 1-d (also for no
/// values: shape [0]). Use scalar() for a 0-d tensor.
template <class T>
Tensor<T> from_vector(const std::vector<T>& values, Shape shape = {}) {
  if (shape.empty()) shape = {static_cast<Index>(values.size())};
  VEIL_CHECK(numel_of(shape) == static_cast<Index>(values.size()), ShapeError, "from_vector: shape ",
             to_string(shape), " holds ", numel_of(shape), " elements, but values has ", values.size());
  Tensor<T> out = Tensor<T>::empty(shape);
  std::copy(values.begin(), values.end(), out.data());
  return out;
}

/// A 0-d tensor.
template <class T>
Tensor<T> scalar(T value) { return full<T>({}, value); }

}  // namespace veil

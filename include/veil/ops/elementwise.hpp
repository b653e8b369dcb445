// Elementwise ops with NumPy broadcasting. Each op: forward kernel, backward, then the public op.
// Backward of a broadcast input sums the gradient over the broadcast dimensions (sum_to).
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "veil/autograd/node.hpp"
#include "veil/detail/strided_loop.hpp"
#include "veil/tensor/creation.hpp"

namespace veil {

namespace detail {

/// y = f(x) elementwise; y is contiguous.
template <class T, class U = T, class F>
Tensor<U> map_unary(const Tensor<T>& x, F f) {
  Tensor<U> out = Tensor<U>::empty(x.shape());
  U* dst = out.data();
  if (x.is_contiguous()) {
    const T* src = x.data();
    parallel_for(0, x.numel(), elementwise_grain, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) dst[i] = f(src[i]);
    });
    return out;
  }
  const T* src = x.storage()->data();
  for_each_row<2>(x.shape(), {out.strides(), x.strides()}, {0, x.offset()}, elementwise_grain,
                  [&](const std::array<Index, 2>& at, Index count, const std::array<Index, 2>& step) {
                    for (Index i = 0; i < count; ++i) dst[at[0] + i] = f(src[at[1] + i * step[1]]);
                  });
  return out;
}

/// out = f(a, b) with broadcasting; out is contiguous.
template <class T, class U = T, class F>
Tensor<U> map_binary(const Tensor<T>& a, const Tensor<T>& b, F f, const char* op) {
  const Shape shape = a.shape() == b.shape() ? a.shape() : broadcast_shapes(a.shape(), b.shape(), op);
  Tensor<U> out = Tensor<U>::empty(shape);
  U* dst = out.data();
  if (a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous()) {
    const T* pa = a.data();
    const T* pb = b.data();
    parallel_for(0, out.numel(), elementwise_grain, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) dst[i] = f(pa[i], pb[i]);
    });
    return out;
  }
  const T* pa = a.storage() ? a.storage()->data() : nullptr;
  const T* pb = b.storage() ? b.storage()->data() : nullptr;
  for_each_row<3>(shape,
                  {out.strides(), broadcast_strides(a.shape(), a.strides(), shape),
                   broadcast_strides(b.shape(), b.strides(), shape)},
                  {0, a.offset(), b.offset()}, elementwise_grain,
                  [&](const std::array<Index, 3>& at, Index count, const std::array<Index, 3>& step) {
                    for (Index i = 0; i < count; ++i)
                      dst[at[0] + i] = f(pa[at[1] + i * step[1]], pb[at[2] + i * step[2]]);
                  });
  return out;
}

/// Sums `grad` down to `shape`, the shape of a tensor that was broadcast to grad's shape.
template <class T>
Tensor<T> sum_to(const Tensor<T>& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  // Common case (bias gradients): every leading dimension summed, the trailing ones kept. Split
  // over output columns, each summed over the rows in order: parallel and thread-independent.
  const Index rows = grad.numel() / std::max<Index>(numel_of(shape), 1);
  bool leading_only = grad.is_contiguous() && grad.numel() > 0;
  const std::size_t lead = grad.shape().size() - shape.size();
  for (std::size_t d = 0; leading_only && d < shape.size(); ++d) leading_only = shape[d] == grad.shape()[lead + d];
  if (leading_only) {
    Tensor<T> out = zeros<T>(shape);
    const Index columns = out.numel();
    const T* src = grad.data();
    T* dst = out.data();
    parallel_for(0, columns, std::max<Index>(16, elementwise_grain / std::max<Index>(rows, 1)), [&](Index first, Index last) {
      for (Index row = 0; row < rows; ++row)
        for (Index c = first; c < last; ++c) dst[c] += src[row * columns + c];
    });
    return out;
  }
  Tensor<T> out = zeros<T>(shape);
  T* dst = out.data();
  const T* src = grad.storage()->data();
  // Serial on purpose: each output element is a sum in a fixed order, independent of threads.
  const Shape reduced = broadcast_strides(shape, out.strides(), grad.shape());  // 0 on summed dims
  for_each_row<2>(grad.shape(), {reduced, grad.strides()}, {0, grad.offset()},
                  std::numeric_limits<Index>::max(),
                  [&](const std::array<Index, 2>& at, Index count, const std::array<Index, 2>& step) {
                    if (step[0] == 0) {
                      T total = T(0);
                      for (Index i = 0; i < count; ++i) total += src[at[1] + i * step[1]];
                      dst[at[0]] += total;
                    } else {
                      for (Index i = 0; i < count; ++i) dst[at[0] + i * step[0]] += src[at[1] + i * step[1]];
                    }
                  });
  return out;
}

/// dst[...] = src[...] (accumulate = false) or dst[...] += src[...], for equally shaped, possibly strided views.
template <class T>
void copy_into(const Tensor<T>& dst, const Tensor<T>& src, bool accumulate = false) {
  T* out = dst.storage()->data();
  const T* in = src.storage()->data();
  for_each_row<2>(dst.shape(), {dst.strides(), src.strides()}, {dst.offset(), src.offset()}, elementwise_grain,
                  [&](const std::array<Index, 2>& at, Index count, const std::array<Index, 2>& step) {
                    if (accumulate)
                      for (Index i = 0; i < count; ++i) out[at[0] + i * step[0]] += in[at[1] + i * step[1]];
                    else
                      for (Index i = 0; i < count; ++i) out[at[0] + i * step[0]] = in[at[1] + i * step[1]];
                  });
}

template <class T>
void check_same_dtype_defined(const Tensor<T>& a, const Tensor<T>& b, const char* op) {
  VEIL_CHECK(a.defined() && b.defined(), ValueError, op, ": both operands must be defined tensors");
}

}  // namespace detail

// ---- binary arithmetic -------------------------------------------------------------------------

template <class T>
Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same_dtype_defined(a, b, "add");
  Tensor<T> out = detail::map_binary(a, b, [](T x, T y) { return x + y; }, "add");
  return autograd::record<T>("add", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::sum_to(grad, sa), detail::sum_to(grad, sb)};
  });
}

template <class T>
Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same_dtype_defined(a, b, "sub");
  Tensor<T> out = detail::map_binary(a, b, [](T x, T y) { return x - y; }, "sub");
  return autograd::record<T>("sub", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::sum_to(grad, sa),
                                  detail::sum_to(detail::map_unary(grad, [](T g) { return -g; }), sb)};
  });
}

// d(a*b) = b da + a db
template <class T>
Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same_dtype_defined(a, b, "mul");
  Tensor<T> out = detail::map_binary(a, b, [](T x, T y) { return x * y; }, "mul");
  return autograd::record<T>(
      "mul", out, {&a, &b}, [a = a.detach(), b = b.detach()](const Tensor<T>& grad, const autograd::Node<T>& node) {
        const auto times = [](T g, T y) { return g * y; };
        return std::vector<Tensor<T>>{
            node.needs_input_grad(0) ? detail::sum_to(detail::map_binary(grad, b, times, "mul"), a.shape()) : Tensor<T>(),
            node.needs_input_grad(1) ? detail::sum_to(detail::map_binary(grad, a, times, "mul"), b.shape()) : Tensor<T>()};
      });
}

// d(a/b) = da / b - a db / b^2
template <class T>
Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same_dtype_defined(a, b, "div");
  Tensor<T> out = detail::map_binary(a, b, [](T x, T y) { return x / y; }, "div");
  return autograd::record<T>(
      "div", out, {&a, &b},
      [a = a.detach(), b = b.detach(), out = out.detach()](const Tensor<T>& grad, const autograd::Node<T>& node) {
        Tensor<T> grad_a, grad_b;
        if (node.needs_input_grad(0))
          grad_a = detail::sum_to(detail::map_binary(grad, b, [](T g, T y) { return g / y; }, "div"), a.shape());
        if (node.needs_input_grad(1)) {
          const Tensor<T> g_over_b = detail::map_binary(grad, b, [](T g, T y) { return g / y; }, "div");
          grad_b = detail::sum_to(detail::map_binary(g_over_b, out, [](T g, T q) { return -g * q; }, "div"), b.shape());
        }
        return std::vector<Tensor<T>>{grad_a, grad_b};
      });
}

template <class T> Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }

// ---- scalar arithmetic: y = x op s, s a constant -----------------------------------------------

template <class T>
Tensor<T> add_scalar(const Tensor<T>& x, T s) {
  Tensor<T> out = detail::map_unary(x, [s](T v) { return v + s; });
  return autograd::record<T>("add_scalar", out, {&x}, [](const Tensor<T>& grad) { return std::vector<Tensor<T>>{grad}; });
}

template <class T>
Tensor<T> mul_scalar(const Tensor<T>& x, T s) {
  Tensor<T> out = detail::map_unary(x, [s](T v) { return v * s; });
  return autograd::record<T>("mul_scalar", out, {&x}, [s](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::map_unary(grad, [s](T g) { return g * s; })};
  });
}

// Division by a constant divides (not multiplies by 1/s, which can differ in the last bit).
template <class T>
Tensor<T> div_scalar(const Tensor<T>& x, T s) {
  Tensor<T> out = detail::map_unary(x, [s](T v) { return v / s; });
  return autograd::record<T>("div_scalar", out, {&x}, [s](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::map_unary(grad, [s](T g) { return g / s; })};
  });
}

// d(s - x) = -dx;  d(s / x) = -s / x^2 dx
template <class T>
Tensor<T> rsub_scalar(T s, const Tensor<T>& x) {
  Tensor<T> out = detail::map_unary(x, [s](T v) { return s - v; });
  return autograd::record<T>("rsub_scalar", out, {&x}, [](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::map_unary(grad, [](T g) { return -g; })};
  });
}

template <class T>
Tensor<T> rdiv_scalar(T s, const Tensor<T>& x) {
  Tensor<T> out = detail::map_unary(x, [s](T v) { return s / v; });
  return autograd::record<T>("rdiv_scalar", out, {&x}, [s, x = x.detach()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::map_binary(grad, x, [s](T g, T v) { return -g * s / (v * v); }, "div")};
  });
}

template <class T> Tensor<T> operator+(const Tensor<T>& x, T s) { return add_scalar(x, s); }
template <class T> Tensor<T> operator+(T s, const Tensor<T>& x) { return add_scalar(x, s); }
template <class T> Tensor<T> operator-(const Tensor<T>& x, T s) { return add_scalar(x, T(-s)); }
template <class T> Tensor<T> operator-(T s, const Tensor<T>& x) { return rsub_scalar(s, x); }
template <class T> Tensor<T> operator*(const Tensor<T>& x, T s) { return mul_scalar(x, s); }
template <class T> Tensor<T> operator*(T s, const Tensor<T>& x) { return mul_scalar(x, s); }
template <class T> Tensor<T> operator/(const Tensor<T>& x, T s) { return div_scalar(x, s); }
template <class T> Tensor<T> operator/(T s, const Tensor<T>& x) { return rdiv_scalar(s, x); }

// ---- unary functions ---------------------------------------------------------------------------

namespace detail {

/// A unary op whose derivative is expressed through the input x and output y: dy/dx = slope(x, y).
template <class T, class Forward, class Slope>
Tensor<T> unary_op(const char* name, const Tensor<T>& x, Forward forward, Slope slope) {
  Tensor<T> out = map_unary(x, forward);
  return autograd::record<T>(name, out, {&x}, [x = x.detach(), y = out.detach(), slope](const Tensor<T>& grad) {
    const Tensor<T> x_contiguous = x.is_contiguous() ? x : copy_contiguous(x);
    Tensor<T> dx = copy_contiguous(grad);
    T* d = dx.data();
    const T* px = x_contiguous.data();
    const T* py = y.data();
    parallel_for(0, dx.numel(), elementwise_grain, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) d[i] *= slope(px[i], py[i]);
    });
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace detail

template <class T>
Tensor<T> neg(const Tensor<T>& x) { return mul_scalar(x, T(-1)); }
template <class T>
Tensor<T> operator-(const Tensor<T>& x) { return neg(x); }

template <class T>
Tensor<T> exp(const Tensor<T>& x) {
  return detail::unary_op("exp", x, [](T v) { return std::exp(v); }, [](T, T y) { return y; });
}

template <class T>
Tensor<T> log(const Tensor<T>& x) {
  return detail::unary_op("log", x, [](T v) { return std::log(v); }, [](T v, T) { return T(1) / v; });
}

template <class T>
Tensor<T> sqrt(const Tensor<T>& x) {
  return detail::unary_op("sqrt", x, [](T v) { return std::sqrt(v); }, [](T, T y) { return T(0.5) / y; });
}

/// x^exponent; d/dx = exponent x^(exponent-1).
template <class T>
Tensor<T> pow(const Tensor<T>& x, T exponent) {
  return detail::unary_op(
      "pow", x, [exponent](T v) { return std::pow(v, exponent); },
      [exponent](T v, T) { return exponent == T(0) ? T(0) : exponent * std::pow(v, exponent - T(1)); });
}

template <class T>
Tensor<T> tanh(const Tensor<T>& x) {
  return detail::unary_op("tanh", x, [](T v) { return std::tanh(v); }, [](T, T y) { return T(1) - y * y; });
}

template <class T>
Tensor<T> sigmoid(const Tensor<T>& x) {
  return detail::unary_op("sigmoid", x, [](T v) { return T(1) / (T(1) + std::exp(-v)); },
                          [](T, T y) { return y * (T(1) - y); });
}

/// max(x, 0); the derivative at 0 is taken as 0 (PyTorch's choice).
template <class T>
Tensor<T> relu(const Tensor<T>& x) {
  return detail::unary_op("relu", x, [](T v) { return v > T(0) ? v : T(0); },
                          [](T v, T) { return v > T(0) ? T(1) : T(0); });
}

enum class GeluApproximation { none, tanh };

namespace detail {

/// Applies fn(in, out) to Eigen array maps over blocks of `block` elements. Blocks start on
/// multiples of 16 elements, so with 64-byte aligned storage every element takes the same
/// (vector or scalar tail) path whatever the thread count: results do not depend on it.
template <class T, class Fn>
void map_blocks(const T* in, T* out, Index count, Fn&& fn) {
  constexpr Index block = 4096;
  parallel_for(0, (count + block - 1) / block, std::max<Index>(1, elementwise_grain / block), [&](Index first, Index last) {
    for (Index blk = first; blk < last; ++blk) {
      const Index begin = blk * block, size = std::min(block, count - begin);
      fn(Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(in + begin, size),
         Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(out + begin, size), begin);
    }
  });
}

template <class T> inline constexpr T gelu_inv_sqrt2 = T(0.70710678118654752440);
template <class T> inline constexpr T gelu_inv_sqrt_2pi = T(0.39894228040143267794);
template <class T> inline constexpr T gelu_sqrt_2_over_pi = T(0.79788456080286535588);
template <class T> inline constexpr T gelu_cubic = T(0.044715);

}  // namespace detail

/// GELU. `none`: x Φ(x) with Φ(x) = (1 + erf(x/√2))/2 (PyTorch's default; nanoGPT's nn.GELU());
/// `tanh`: 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), GPT-2's approximation.
/// d/dx: Φ(x) + x φ(x) with φ the normal density; for tanh, 0.5(1 + t) + 0.5 x (1 - t²) √(2/π)(1 + 3·0.044715 x²).
/// Vectorised through Eigen's array functions (its float erf is a rational approximation within
/// a few ulp, about 70× faster than libm's scalar erf, which dominated GPT training time).
template <class T>
Tensor<T> gelu(const Tensor<T>& x, GeluApproximation approximation = GeluApproximation::none) {
  using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
  using detail::gelu_cubic, detail::gelu_inv_sqrt2, detail::gelu_inv_sqrt_2pi, detail::gelu_sqrt_2_over_pi;
  const Tensor<T> input = x.is_contiguous() ? x : detail::copy_contiguous(x);
  Tensor<T> out = Tensor<T>::empty(x.shape());
  const bool exact = approximation == GeluApproximation::none;
  detail::map_blocks(input.data(), out.data(), x.numel(), [&](const auto& v, auto y, Index) {
    if (exact) y = T(0.5) * v * (T(1) + (v * gelu_inv_sqrt2<T>).erf());
    else y = T(0.5) * v * (T(1) + (gelu_sqrt_2_over_pi<T> * (v + gelu_cubic<T> * v.cube())).tanh());
  });
  return autograd::record<T>(exact ? "gelu" : "gelu_tanh", out, {&x}, [input = input.detach(), exact](const Tensor<T>& grad) {
    const Tensor<T> g = grad.is_contiguous() ? grad : detail::copy_contiguous(grad);
    Tensor<T> dx = Tensor<T>::empty(input.shape());
    detail::map_blocks(input.data(), dx.data(), input.numel(), [&](const auto& v, auto d, Index begin) {
      const Eigen::Map<const Array> dy(g.data() + begin, v.size());
      if (exact) {
        d = dy * (T(0.5) * (T(1) + (v * gelu_inv_sqrt2<T>).erf()) + v * gelu_inv_sqrt_2pi<T> * (T(-0.5) * v.square()).exp());
      } else {
        const Array t = (gelu_sqrt_2_over_pi<T> * (v + gelu_cubic<T> * v.cube())).tanh();
        d = dy * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t.square()) * gelu_sqrt_2_over_pi<T> *
                                            (T(1) + T(3) * gelu_cubic<T> * v.square()));
      }
    });
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace veil

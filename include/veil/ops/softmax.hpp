// Softmax and log-softmax along one dimension, max-subtracted so exp never overflows.
//
// Glossary: x, y: [P, N, Q], where N is the extent of the softmax dimension, P the product of the
// extents before it and Q of those after it (Q = 1 for the last dimension). Kernels work on
// blocks of up to `softmax_block` columns q, walking N in the outer loop so reads stay contiguous.
//
// Special values follow PyTorch: a NaN or +inf anywhere in a group makes the whole group NaN, and a
// group of all −inf gives NaN (0/0 after subtracting the −inf maximum). Masked attention does not
// go through here: the attention kernel gives fully masked rows exact zeros instead.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "veil/ops/elementwise.hpp"

namespace veil {

namespace detail {

inline constexpr Index softmax_block = 64;

/// Calls fn(p, q_begin, q_end) for every p in [0, P) and every block of columns of [0, Q).
template <class Fn>
void for_each_softmax_block(Index outer, Index n, Index inner, Fn&& fn) {
  const Index blocks = (inner + softmax_block - 1) / softmax_block;
  const Index width = std::min(inner, softmax_block);
  const Index grain = std::max<Index>(1, elementwise_grain / std::max<Index>(1, n * width));
  parallel_for(0, outer * blocks, grain, [&](Index begin, Index end) {
    for (Index item = begin; item < end; ++item) {
      const Index q_begin = (item % blocks) * softmax_block;
      fn(item / blocks, q_begin, std::min(q_begin + softmax_block, inner));
    }
  });
}

/// x -> y: softmax y = exp(x − m) / Σ exp(x − m), log-softmax y = x − m − log Σ exp(x − m),
/// m the group maximum.
template <class T>
void softmax_forward(const T* x, T* y, Index outer, Index n, Index inner, bool log) {
  for_each_softmax_block(outer, n, inner, [&](Index p, Index q_begin, Index q_end) {
    const Index width = q_end - q_begin;
    const T* in = x + p * n * inner + q_begin;
    T* out = y + p * n * inner + q_begin;
    T maximum[softmax_block], total[softmax_block];
    std::fill(maximum, maximum + width, -std::numeric_limits<T>::infinity());
    std::fill(total, total + width, T(0));
    for (Index k = 0; k < n; ++k)
      for (Index j = 0; j < width; ++j) maximum[j] = in[k * inner + j] > maximum[j] ? in[k * inner + j] : maximum[j];
    for (Index k = 0; k < n; ++k) {
      for (Index j = 0; j < width; ++j) {
        const T e = std::exp(in[k * inner + j] - maximum[j]);
        total[j] += e;
        if (!log) out[k * inner + j] = e;
      }
    }
    if (log) {
      // (x − m) − log Σ, not x − (m + log Σ): the shifted value is exact, so nothing of size m is rounded.
      for (Index j = 0; j < width; ++j) total[j] = std::log(total[j]);
      for (Index k = 0; k < n; ++k)
        for (Index j = 0; j < width; ++j) out[k * inner + j] = (in[k * inner + j] - maximum[j]) - total[j];
    } else {
      for (Index k = 0; k < n; ++k)
        for (Index j = 0; j < width; ++j) out[k * inner + j] /= total[j];
    }
  });
}

/// From the saved output y and dy: softmax dx = y ∘ (dy − Σ dy ∘ y);
/// log-softmax dx = dy − exp(y) Σ dy (exp(y) is the softmax). Sums run over N.
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, Index outer, Index n, Index inner, bool log) {
  for_each_softmax_block(outer, n, inner, [&](Index p, Index q_begin, Index q_end) {
    const Index width = q_end - q_begin, start = p * n * inner + q_begin;
    T dot[softmax_block];
    std::fill(dot, dot + width, T(0));
    for (Index k = 0; k < n; ++k)
      for (Index j = 0; j < width; ++j) {
        const Index at = start + k * inner + j;
        dot[j] += log ? dy[at] : dy[at] * y[at];
      }
    for (Index k = 0; k < n; ++k)
      for (Index j = 0; j < width; ++j) {
        const Index at = start + k * inner + j;
        dx[at] = log ? dy[at] - std::exp(y[at]) * dot[j] : y[at] * (dy[at] - dot[j]);
      }
  });
}

/// x: [P, N, Q] along `dim` -> y of x's shape, recording the backward from the saved y.
template <class T>
Tensor<T> softmax_op(const char* name, const Tensor<T>& x, Index dim, bool log) {
  static_assert(std::is_floating_point_v<T>, "softmax: T must be float or double");
  const Index rank = x.dim();
  dim = wrap_dim(dim, rank, "dim");
  Index outer = 1, n = 1, inner = 1;
  for (Index d = 0; d < rank; ++d) (d < dim ? outer : d == dim ? n : inner) *= x.shape()[d];
  const Tensor<T> source = x.is_contiguous() ? x : copy_contiguous(x);
  Tensor<T> out = Tensor<T>::empty(x.shape());
  softmax_forward(source.data(), out.data(), outer, n, inner, log);
  return autograd::record<T>(name, out, {&x}, [y = out.detach(), outer, n, inner, log](const Tensor<T>& grad) {
    const Tensor<T> dy = grad.is_contiguous() ? grad : copy_contiguous(grad);
    Tensor<T> dx = Tensor<T>::empty(y.shape());
    softmax_backward(y.data(), dy.data(), dx.data(), outer, n, inner, log);
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace detail

/// exp(x) / Σ exp(x) along `dim` (negative counts from the end). x: [..., N, ...] -> same shape.
template <class T>
Tensor<T> softmax(const Tensor<T>& x, Index dim) {
  return detail::softmax_op("softmax", x, dim, false);
}

/// log(softmax(x)) along `dim`, computed as x − m − log Σ exp(x − m) (no log of a rounded 0).
template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, Index dim) {
  return detail::softmax_op("log_softmax", x, dim, true);
}

}  // namespace veil

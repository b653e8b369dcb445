// Reductions: sum, mean, max over a set of dimensions, and logsumexp along one dimension.
//
// Glossary: R the product of the kept extents (output elements), N the product of the reduced
// extents (elements per reduced group). Every kernel sees its input as [R, N] after moving the
// reduced dimensions last.
//
// Determinism: a group of N elements is reduced in fixed chunks of `reduce_chunk` elements, each
// chunk summed sequentially, and the chunk partials combined in chunk order. The parallel split is
// over (group, chunk) pairs, so the same bits come out for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "veil/ops/shape_ops.hpp"

namespace veil {

namespace detail {

inline constexpr Index reduce_chunk = 4096;

/// Which dimensions a reduction covers, and the tensor rearranged so they come last.
template <class T>
struct ReductionLayout {
  Tensor<T> rows;            // [R, N], contiguous
  Shape kept_shape;          // output shape with keepdim = true (1 on reduced dims)
  Shape out_shape;           // output shape as requested
  std::vector<bool> reduced; // per input dimension
  Index groups = 1;          // R
  Index group_size = 1;      // N
};

/// Validates `dims` (negatives allowed, empty = all, no repeats) and lays x out as [R, N].
template <class T>
ReductionLayout<T> reduction_layout(const Tensor<T>& x, const Shape& dims, bool keepdim, const char* op) {
  const Index rank = x.dim();
  ReductionLayout<T> layout;
  layout.reduced.assign(static_cast<std::size_t>(rank), dims.empty());
  std::vector<bool> named(static_cast<std::size_t>(rank), false);
  for (Index dim : dims) {
    const Index d = wrap_dim(dim, rank, "dims");
    if (rank == 0) continue;  // a 0-d tensor accepts dim 0 / -1 and reduces over nothing (PyTorch)
    VEIL_CHECK(!named[d], ValueError, op, ": dims ", to_string(dims), " name dimension ", d, " twice");
    named[d] = true;
    layout.reduced[d] = true;
  }
  Shape order;
  for (Index d = 0; d < rank; ++d) {
    if (layout.reduced[d]) {
      layout.group_size *= x.shape()[d];
      layout.kept_shape.push_back(1);
    } else {
      order.push_back(d);
      layout.groups *= x.shape()[d];
      layout.kept_shape.push_back(x.shape()[d]);
      layout.out_shape.push_back(x.shape()[d]);
    }
  }
  if (keepdim) layout.out_shape = layout.kept_shape;
  for (Index d = 0; d < rank; ++d)
    if (layout.reduced[d]) order.push_back(d);
  NoGradGuard no_grad;
  const Tensor<T> moved = rank == 0 ? x.detach() : permute(x.detach(), order);
  layout.rows = moved.is_contiguous() ? moved : copy_contiguous(moved);
  return layout;
}

/// Sum of `count` elements, accumulated in eight interleaved lanes combined pairwise: the order
/// is fixed by the data alone, and the lanes let the compiler vectorise without reassociating.
template <class T>
T chunk_sum(const T* values, Index count) {
  T lanes[8] = {};
  Index i = 0;
  for (; i + 8 <= count; i += 8)
    for (int lane = 0; lane < 8; ++lane) lanes[lane] += values[i + lane];
  for (int lane = 0; i < count; ++i, ++lane) lanes[lane] += values[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

/// True when `candidate` should replace `best` as a maximum: larger, or the first NaN (NaN wins,
/// as in PyTorch). Ties keep the earlier element.
template <class T>
bool beats(T candidate, T best) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(best)) return false;
    if (std::isnan(candidate)) return true;
  }
  return candidate > best;
}

/// Work items (one chunk each) per parallel_for task: about elementwise_grain elements.
inline Index chunk_grain(Index group_size) {
  return std::max<Index>(1, elementwise_grain / std::clamp<Index>(group_size, 1, reduce_chunk));
}

/// rows: [R, N] -> sums: [R], each group reduced chunk by chunk (see the file comment).
template <class T>
void sum_forward(const T* rows, T* sums, Index groups, Index group_size) {
  const Index chunks = std::max<Index>(1, (group_size + reduce_chunk - 1) / reduce_chunk);
  std::vector<T> partials(static_cast<std::size_t>(groups * chunks));
  parallel_for(0, groups * chunks, chunk_grain(group_size), [&](Index begin, Index end) {
    for (Index item = begin; item < end; ++item) {
      const Index group = item / chunks, chunk = item % chunks;
      const Index first = chunk * reduce_chunk;
      const Index count = std::min(reduce_chunk, group_size - first);
      partials[item] = count > 0 ? chunk_sum(rows + group * group_size + first, count) : T(0);
    }
  });
  for (Index group = 0; group < groups; ++group) {
    T total = T(0);
    for (Index chunk = 0; chunk < chunks; ++chunk) total += partials[group * chunks + chunk];
    sums[group] = total;
  }
}

/// Gradient of a reduction whose output element g received grad[g] and which passes
/// scale * grad[g] to every element of group g: grad reshaped to kept_shape, broadcast to in_shape.
template <class T>
Tensor<T> broadcast_reduction_grad(const Tensor<T>& grad, const Shape& kept_shape, const Shape& in_shape, T scale) {
  const Tensor<T> grad_kept = reshape(grad, kept_shape);
  const Tensor<T> spread = Tensor<T>::view_of(grad_kept, in_shape,
                                              broadcast_strides(kept_shape, grad_kept.strides(), in_shape),
                                              grad_kept.offset());
  return map_unary(spread, [scale](T g) { return g * scale; });
}

/// rows: [R, N] -> maxima: [R], positions: [R] (index in [0, N) of the first maximum). N > 0.
template <class T>
void max_forward(const T* rows, T* maxima, Index* positions, Index groups, Index group_size) {
  const Index chunks = (group_size + reduce_chunk - 1) / reduce_chunk;
  std::vector<T> chunk_max(static_cast<std::size_t>(groups * chunks));
  std::vector<Index> chunk_at(static_cast<std::size_t>(groups * chunks));
  parallel_for(0, groups * chunks, chunk_grain(group_size), [&](Index begin, Index end) {
    for (Index item = begin; item < end; ++item) {
      const Index group = item / chunks, first = (item % chunks) * reduce_chunk;
      const Index last = std::min(first + reduce_chunk, group_size);
      const T* row = rows + group * group_size;
      Index at = first;
      for (Index i = first + 1; i < last; ++i)
        if (beats(row[i], row[at])) at = i;
      chunk_max[item] = row[at];
      chunk_at[item] = at;
    }
  });
  for (Index group = 0; group < groups; ++group) {
    Index best = group * chunks;
    for (Index item = best + 1; item < (group + 1) * chunks; ++item)
      if (beats(chunk_max[item], chunk_max[best])) best = item;
    maxima[group] = chunk_max[best];
    positions[group] = chunk_at[best];
  }
}

/// grad: [R] -> dx of in_shape, zero except grad[g] at the first maximum of group g.
/// source_index[g] is that maximum's row-major index in the input.
template <class T>
Tensor<T> max_backward(const Tensor<T>& grad, const std::vector<Index>& source_index, const Shape& in_shape) {
  Tensor<T> dx = zeros<T>(in_shape);
  const Tensor<T> g = grad.is_contiguous() ? grad : copy_contiguous(grad);
  T* d = dx.data();
  const T* pg = g.data();
  for (std::size_t group = 0; group < source_index.size(); ++group) d[source_index[group]] = pg[group];
  return dx;
}

}  // namespace detail

/// Sum over `dims` (empty: every dimension, giving a 0-d tensor). x: [...] -> reduced shape.
/// An empty group sums to 0.
template <class T>
Tensor<T> sum(const Tensor<T>& x, const Shape& dims, bool keepdim = false) {
  auto layout = detail::reduction_layout(x, dims, keepdim, "sum");
  Tensor<T> out = Tensor<T>::empty(layout.out_shape);
  detail::sum_forward(layout.rows.data(), out.data(), layout.groups, layout.group_size);
  return autograd::record<T>("sum", out, {&x}, [kept = layout.kept_shape, from = x.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::broadcast_reduction_grad(grad, kept, from, T(1))};
  });
}

/// Sum of every element: a 0-d tensor.
template <class T>
Tensor<T> sum(const Tensor<T>& x) { return sum(x, Shape{}, false); }

/// Mean over `dims` (empty: every dimension). Over an empty group the mean is 0/0 = NaN (PyTorch).
template <class T>
Tensor<T> mean(const Tensor<T>& x, const Shape& dims, bool keepdim = false) {
  static_assert(std::is_floating_point_v<T>, "mean: T must be float or double");
  auto layout = detail::reduction_layout(x, dims, keepdim, "mean");
  Tensor<T> out = Tensor<T>::empty(layout.out_shape);
  detail::sum_forward(layout.rows.data(), out.data(), layout.groups, layout.group_size);
  const T count = static_cast<T>(layout.group_size);
  T* values = out.data();
  for (Index group = 0; group < layout.groups; ++group) values[group] /= count;
  return autograd::record<T>("mean", out, {&x}, [kept = layout.kept_shape, from = x.shape(), count](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::broadcast_reduction_grad(grad, kept, from, T(1) / count)};
  });
}

/// Mean of every element: a 0-d tensor.
template <class T>
Tensor<T> mean(const Tensor<T>& x) { return mean(x, Shape{}, false); }

/// Maximum over `dims` (empty: every dimension). NaN wins over any number. The gradient goes to
/// the first maximal element of each group (row-major order) and nowhere else, like PyTorch's
/// max(dim); ties therefore do not share it. Throws ValueError when a reduced dimension is empty.
template <class T>
Tensor<T> max(const Tensor<T>& x, const Shape& dims, bool keepdim = false) {
  auto layout = detail::reduction_layout(x, dims, keepdim, "max");
  for (Index d = 0; d < x.dim(); ++d)
    VEIL_CHECK(!layout.reduced[d] || x.shape()[d] > 0, ValueError, "max: cannot reduce over dimension ", d,
               " of shape ", to_string(x.shape()), ": expected a non-zero extent, got 0");
  Tensor<T> out = Tensor<T>::empty(layout.out_shape);
  std::vector<Index> positions(static_cast<std::size_t>(layout.groups));
  detail::max_forward(layout.rows.data(), out.data(), positions.data(), layout.groups, layout.group_size);
  const Tensor<T>* inputs[] = {&x};
  if (!autograd::needs_history<T>(inputs, 1)) return out;

  // Row-major input index of (group, position): decompose group over the kept dimensions and
  // position over the reduced ones, both in input order.
  const Shape input_strides = contiguous_strides(x.shape());
  std::vector<Index> source_index(positions.size());
  for (Index group = 0; group < layout.groups; ++group) {
    Index kept_rest = group, reduced_rest = positions[group], index = 0;
    for (Index d = x.dim() - 1; d >= 0; --d) {
      Index& rest = layout.reduced[d] ? reduced_rest : kept_rest;
      index += (rest % x.shape()[d]) * input_strides[d];
      rest /= x.shape()[d];
    }
    source_index[group] = index;
  }
  return autograd::record<T>("max", out, {&x}, [source_index = std::move(source_index), from = x.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::max_backward(grad, source_index, from)};
  });
}

/// Maximum of every element: a 0-d tensor.
template <class T>
Tensor<T> max(const Tensor<T>& x) { return max(x, Shape{}, false); }

namespace detail {

/// rows: [R, N] -> lse: [R], lse = m + log Σ exp(x − m) with m the row maximum. An infinite m is
/// replaced by 0 (PyTorch): a row of −inf gives −inf, a row containing +inf gives +inf.
template <class T>
void logsumexp_forward(const T* rows, T* lse, Index groups, Index group_size) {
  parallel_for(0, groups, std::max<Index>(1, elementwise_grain / std::max<Index>(group_size, 1)), [&](Index begin, Index end) {
    for (Index group = begin; group < end; ++group) {
      const T* row = rows + group * group_size;
      T m = -std::numeric_limits<T>::infinity();
      for (Index i = 0; i < group_size; ++i) m = row[i] > m ? row[i] : m;
      if (std::isinf(m)) m = T(0);
      T total = T(0);
      for (Index i = 0; i < group_size; ++i) total += std::exp(row[i] - m);
      lse[group] = m + std::log(total);
    }
  });
}

}  // namespace detail

/// log Σ exp(x) along `dim`, computed max-shifted so large inputs do not overflow.
/// x: [..., N, ...] -> [..., ...] (or [..., 1, ...] with keepdim). Backward: dx = dy exp(x − lse).
/// A group of all −inf gives −inf forward and NaN gradient, as in PyTorch.
template <class T>
Tensor<T> logsumexp(const Tensor<T>& x, Index dim, bool keepdim = false) {
  static_assert(std::is_floating_point_v<T>, "logsumexp: T must be float or double");
  auto layout = detail::reduction_layout(x, Shape{dim}, keepdim, "logsumexp");
  Tensor<T> out = Tensor<T>::empty(layout.out_shape);
  detail::logsumexp_forward(layout.rows.data(), out.data(), layout.groups, layout.group_size);
  return autograd::record<T>(
      "logsumexp", out, {&x}, [x = x.detach(), lse = out.detach(), kept = layout.kept_shape](const Tensor<T>& grad) {
        const Tensor<T> lse_kept = reshape(lse, kept);
        const Tensor<T> grad_kept = reshape(grad, kept);
        const Tensor<T> weight = detail::map_binary(x, lse_kept, [](T v, T l) { return std::exp(v - l); }, "logsumexp");
        return std::vector<Tensor<T>>{detail::map_binary(weight, grad_kept, [](T w, T g) { return w * g; }, "logsumexp")};
      });
}

}  // namespace veil

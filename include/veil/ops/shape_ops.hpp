// Differentiable shape ops: zero-copy views (reshape, permute, transpose, slice, expand, squeeze,
// unsqueeze), contiguous, and the copying ones (cat, split, chunk, index_select, where,
// masked_fill). Views share storage with their input; backward maps the gradient back through
// the inverse view.
#pragma once

#include <numeric>
#include <vector>

#include "veil/ops/elementwise.hpp"

namespace veil {

namespace detail {

/// Resolves one -1 in `requested` so that it holds `count` elements.
inline Shape infer_shape(const Shape& requested, Index count, const Shape& from) {
  Shape shape = requested;
  Index known = 1;
  Index infer_at = -1;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == -1) {
      VEIL_CHECK(infer_at < 0, ShapeError, "reshape: only one dimension can be -1, got ", to_string(requested));
      infer_at = static_cast<Index>(d);
    } else {
      VEIL_CHECK(shape[d] >= 0, ShapeError, "reshape: extents must be >= 0 or -1, got ", to_string(requested));
      known *= shape[d];
    }
  }
  if (infer_at >= 0) {
    VEIL_CHECK(known != 0 && count % known == 0, ShapeError, "reshape: cannot reshape ", to_string(from), " (", count,
               " elements) to ", to_string(requested));
    shape[infer_at] = count / known;
  }
  VEIL_CHECK(numel_of(shape) == count, ShapeError, "reshape: cannot reshape ", to_string(from), " (", count,
             " elements) to ", to_string(requested), " (", numel_of(shape), " elements)");
  return shape;
}

}  // namespace detail

/// A contiguous tensor with x's values: x itself when already contiguous.
template <class T>
Tensor<T> contiguous(const Tensor<T>& x) {
  if (x.is_contiguous()) return x;
  return autograd::record<T>("contiguous", detail::copy_contiguous(x), {&x},
                             [](const Tensor<T>& grad) { return std::vector<Tensor<T>>{grad}; });
}

/// x's elements in row-major order with a new shape (one extent may be -1). A view when x is
/// contiguous, a copy otherwise.
template <class T>
Tensor<T> reshape(const Tensor<T>& x, const Shape& shape) {
  const Shape target = detail::infer_shape(shape, x.numel(), x.shape());
  const Tensor<T> source = x.is_contiguous() ? x : detail::copy_contiguous(x);
  Tensor<T> out = Tensor<T>::view_of(source, target, contiguous_strides(target), source.offset());
  return autograd::record<T>("reshape", out, {&x}, [from = x.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{reshape(grad, from)};
  });
}

/// Like reshape, but refuses to copy: x must be contiguous.
template <class T>
Tensor<T> view(const Tensor<T>& x, const Shape& shape) {
  VEIL_CHECK(x.is_contiguous(), ShapeError, "view: the tensor of shape ", to_string(x.shape()), " with strides ",
             to_string(x.strides()), " is not contiguous; use reshape (which copies) or contiguous() first");
  return reshape(x, shape);
}

/// Reorders dimensions: out.shape[i] = x.shape[order[i]].
template <class T>
Tensor<T> permute(const Tensor<T>& x, const Shape& order) {
  const Index rank = x.dim();
  VEIL_CHECK(static_cast<Index>(order.size()) == rank, ShapeError, "permute: order has ", order.size(),
             " entries for a tensor of rank ", rank, " (shape ", to_string(x.shape()), ")");
  Shape shape(order.size()), strides(order.size()), inverse(order.size(), -1);
  for (std::size_t i = 0; i < order.size(); ++i) {
    const Index d = wrap_dim(order[i], rank, "permute order");
    VEIL_CHECK(inverse[d] < 0, ShapeError, "permute: order ", to_string(order), " repeats dimension ", d);
    inverse[d] = static_cast<Index>(i);
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor<T> out = Tensor<T>::view_of(x, shape, strides, x.offset());
  return autograd::record<T>("permute", out, {&x}, [inverse](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{permute(grad, inverse)};
  });
}

/// Swaps two dimensions.
template <class T>
Tensor<T> transpose(const Tensor<T>& x, Index dim0, Index dim1) {
  Shape order(static_cast<std::size_t>(x.dim()));
  std::iota(order.begin(), order.end(), Index{0});
  const Index d0 = wrap_dim(dim0, x.dim(), "transpose dim0"), d1 = wrap_dim(dim1, x.dim(), "transpose dim1");
  if (x.dim() > 0) std::swap(order[d0], order[d1]);  // a 0-d tensor (dims 0 and -1) has nothing to swap
  return permute(x, order);
}

/// Elements start, start + step, ... < end along `dim` (a view). Bounds are clamped like Python slices.
template <class T>
Tensor<T> slice(const Tensor<T>& x, Index dim, Index start, Index end, Index step = 1) {
  VEIL_CHECK(x.dim() > 0, ShapeError, "slice: a 0-d tensor has no dimension to slice (dim ", dim, ")");
  dim = wrap_dim(dim, x.dim(), "slice dim");
  VEIL_CHECK(step > 0, ValueError, "slice: step must be > 0, got ", step);
  const Index extent = x.shape()[dim];
  if (start < 0) start += extent;
  if (end < 0) end += extent;
  start = std::clamp<Index>(start, 0, extent);
  end = std::clamp<Index>(end, start, extent);
  Shape shape = x.shape(), strides = x.strides();
  shape[dim] = (end - start + step - 1) / step;
  strides[dim] *= step;
  Tensor<T> out = Tensor<T>::view_of(x, shape, strides, x.offset() + start * x.strides()[dim]);
  return autograd::record<T>("slice", out, {&x}, [from = x.shape(), dim, start, end, step](const Tensor<T>& grad) {
    Tensor<T> dx = zeros<T>(from);
    detail::copy_into(slice(dx, dim, start, end, step), grad);
    return std::vector<Tensor<T>>{dx};
  });
}

/// `length` elements of `dim` from `start` (a view); start and length must lie inside the dimension.
template <class T>
Tensor<T> narrow(const Tensor<T>& x, Index dim, Index start, Index length) {
  const Index extent = x.size(dim);
  VEIL_CHECK(start >= 0 && length >= 0 && start + length <= extent, ValueError, "narrow: start ", start, " and length ",
             length, " do not fit dimension ", dim, " of extent ", extent);
  return slice(x, dim, start, start + length);
}

/// x broadcast to `shape` without copying (stride 0 on the broadcast dimensions).
template <class T>
Tensor<T> expand(const Tensor<T>& x, const Shape& shape) {
  // Checked first: broadcasting a 1 against a negative extent would otherwise "match" it.
  for (Index extent : shape)
    VEIL_CHECK(extent >= 0, ShapeError, "expand: extents must be >= 0, got ", to_string(shape));
  VEIL_CHECK(broadcast_shapes(x.shape(), shape, "expand") == shape, ShapeError, "expand: cannot expand ",
             to_string(x.shape()), " to ", to_string(shape));
  Tensor<T> out = Tensor<T>::view_of(x, shape, broadcast_strides(x.shape(), x.strides(), shape), x.offset());
  return autograd::record<T>("expand", out, {&x}, [from = x.shape()](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{detail::sum_to(grad, from)};
  });
}

template <class T>
Tensor<T> squeeze(const Tensor<T>& x, Index dim);

/// Inserts a dimension of extent 1 at `dim` (in [-rank-1, rank]).
template <class T>
Tensor<T> unsqueeze(const Tensor<T>& x, Index dim) {
  dim = wrap_dim(dim, x.dim() + 1, "unsqueeze dim");
  Shape shape = x.shape(), strides = x.strides();
  shape.insert(shape.begin() + dim, 1);
  strides.insert(strides.begin() + dim, dim < x.dim() ? x.strides()[dim] * x.shape()[dim] : 1);
  Tensor<T> out = Tensor<T>::view_of(x, shape, strides, x.offset());  // a view for any layout
  return autograd::record<T>("unsqueeze", out, {&x}, [dim](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{squeeze(grad, dim)};
  });
}

/// Removes dimension `dim`, which must have extent 1.
template <class T>
Tensor<T> squeeze(const Tensor<T>& x, Index dim) {
  dim = wrap_dim(dim, x.dim(), "squeeze dim");
  if (x.dim() == 0) return x;  // as in PyTorch: dims 0 and -1 name the 0-d tensor itself
  VEIL_CHECK(x.shape()[dim] == 1, ShapeError, "squeeze: dimension ", dim, " of shape ", to_string(x.shape()),
             " has extent ", x.shape()[dim], ", expected 1");
  Shape shape = x.shape(), strides = x.strides();
  shape.erase(shape.begin() + dim);
  strides.erase(strides.begin() + dim);
  Tensor<T> out = Tensor<T>::view_of(x, shape, strides, x.offset());  // a view for any layout
  return autograd::record<T>("squeeze", out, {&x}, [dim](const Tensor<T>& grad) {
    return std::vector<Tensor<T>>{unsqueeze(grad, dim)};
  });
}

/// Concatenation along `dim`; every other extent must agree.
template <class T>
Tensor<T> cat(const std::vector<Tensor<T>>& tensors, Index dim) {
  VEIL_CHECK(!tensors.empty(), ValueError, "cat: expected at least one tensor, got none");
  const Shape& first = tensors[0].shape();
  dim = wrap_dim(dim, static_cast<Index>(first.size()), "cat dim");
  Shape shape = first;
  shape[dim] = 0;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const Shape& s = tensors[t].shape();
    bool fits = s.size() == first.size();
    for (std::size_t d = 0; fits && d < s.size(); ++d) fits = static_cast<Index>(d) == dim || s[d] == first[d];
    VEIL_CHECK(fits, ShapeError, "cat: tensor ", t, " has shape ", to_string(s), ", which does not match ",
               to_string(first), " outside dimension ", dim);
    shape[dim] += s[dim];
  }
  Tensor<T> out = Tensor<T>::empty(shape);
  std::vector<Index> starts, extents;
  std::vector<const Tensor<T>*> inputs;
  Index start = 0;
  for (const auto& t : tensors) {
    detail::copy_into(slice(out.detach(), dim, start, start + t.shape()[dim]), t);
    starts.push_back(start);
    extents.push_back(t.shape()[dim]);
    inputs.push_back(&t);
    start += t.shape()[dim];
  }
  return autograd::record<T>("cat", out, inputs, [dim, starts, extents](const Tensor<T>& grad) {
    std::vector<Tensor<T>> grads;
    for (std::size_t i = 0; i < starts.size(); ++i) grads.push_back(slice(grad, dim, starts[i], starts[i] + extents[i]));
    return grads;
  });
}

/// Pieces of `split_size` along `dim` (the last may be smaller); views of x.
template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& x, Index split_size, Index dim) {
  VEIL_CHECK(split_size > 0, ValueError, "split: split_size must be > 0, got ", split_size);
  const Index extent = x.size(dim);
  std::vector<Tensor<T>> pieces;
  if (extent == 0) pieces.push_back(x);  // PyTorch: one empty piece
  for (Index start = 0; start < extent; start += split_size)
    pieces.push_back(slice(x, dim, start, std::min(start + split_size, extent)));
  return pieces;
}

/// `chunks` nearly equal pieces along `dim` (PyTorch's rule: ceil(extent / chunks) each).
template <class T>
std::vector<Tensor<T>> chunk(const Tensor<T>& x, Index chunks, Index dim) {
  VEIL_CHECK(chunks > 0, ValueError, "chunk: chunks must be > 0, got ", chunks);
  const Index extent = x.size(dim);
  return split(x, std::max<Index>(1, (extent + chunks - 1) / chunks), dim);
}

/// Rows `indices` of x along `dim`; backward adds each gradient row back to its source row.
template <class T>
Tensor<T> index_select(const Tensor<T>& x, Index dim, const Tensor<std::int64_t>& indices) {
  dim = wrap_dim(dim, x.dim(), "index_select dim");
  VEIL_CHECK(indices.dim() == 1, ShapeError, "index_select: indices must be 1-d, got shape ", to_string(indices.shape()));
  const Index extent = x.shape()[dim];
  const std::vector<std::int64_t> picked = indices.to_vector();
  for (std::size_t i = 0; i < picked.size(); ++i)
    VEIL_CHECK(picked[i] >= 0 && picked[i] < extent, ValueError, "index_select: indices[", i, "] = ", picked[i],
               " is out of range [0, ", extent, ") for dimension ", dim, " of shape ", to_string(x.shape()));
  Shape shape = x.shape();
  shape[dim] = static_cast<Index>(picked.size());
  Tensor<T> out = Tensor<T>::empty(shape);
  for (std::size_t i = 0; i < picked.size(); ++i)
    detail::copy_into(narrow(out.detach(), dim, static_cast<Index>(i), 1), narrow(x.detach(), dim, picked[i], 1));
  return autograd::record<T>("index_select", out, {&x}, [from = x.shape(), dim, picked](const Tensor<T>& grad) {
    Tensor<T> dx = zeros<T>(from);
    for (std::size_t i = 0; i < picked.size(); ++i)
      detail::copy_into(narrow(dx, dim, picked[i], 1), narrow(grad, dim, static_cast<Index>(i), 1), /*accumulate=*/true);
    return std::vector<Tensor<T>>{dx};
  });
}

/// condition ? a : b, elementwise with broadcasting over all three. The gradient flows to a where
/// condition holds and to b elsewhere; the other branch gets exactly 0 (NaN there does not leak).
template <class T>
Tensor<T> where(const Tensor<bool>& condition, const Tensor<T>& a, const Tensor<T>& b) {
  const Shape shape = broadcast_shapes(broadcast_shapes(condition.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor<T> out = Tensor<T>::empty(shape);
  T* dst = out.data();
  const bool* pc = condition.storage()->data();
  const T* pa = a.storage()->data();
  const T* pb = b.storage()->data();
  detail::for_each_row<4>(shape,
                          {out.strides(), broadcast_strides(condition.shape(), condition.strides(), shape),
                           broadcast_strides(a.shape(), a.strides(), shape),
                           broadcast_strides(b.shape(), b.strides(), shape)},
                          {0, condition.offset(), a.offset(), b.offset()}, detail::elementwise_grain,
                          [&](const std::array<Index, 4>& at, Index count, const std::array<Index, 4>& step) {
                            for (Index i = 0; i < count; ++i)
                              dst[at[0] + i] = pc[at[1] + i * step[1]] ? pa[at[2] + i * step[2]] : pb[at[3] + i * step[3]];
                          });
  return autograd::record<T>("where", out, {&a, &b},
                             [condition, sa = a.shape(), sb = b.shape()](const Tensor<T>& grad, const autograd::Node<T>& node) {
                               const Tensor<T> zero = zeros<T>({});
                               return std::vector<Tensor<T>>{
                                   node.needs_input_grad(0) ? detail::sum_to(where(condition, grad, zero), sa) : Tensor<T>(),
                                   node.needs_input_grad(1) ? detail::sum_to(where(condition, zero, grad), sb) : Tensor<T>()};
                             });
}

/// x with `value` written where mask is true (mask broadcasts to x's shape, not the other way).
template <class T>
Tensor<T> masked_fill(const Tensor<T>& x, const Tensor<bool>& mask, T value) {
  VEIL_CHECK(broadcast_shapes(mask.shape(), x.shape(), "masked_fill") == x.shape(), ShapeError, "masked_fill: mask of shape ",
             to_string(mask.shape()), " does not broadcast to the tensor's shape ", to_string(x.shape()));
  return where(mask, full<T>({}, value), x);
}

// ---- Tensor members that record history ----------------------------------------------------------

template <class T>
Tensor<T> Tensor<T>::contiguous() const { return veil::contiguous(*this); }
template <class T>
Tensor<T> Tensor<T>::reshape(const Shape& new_shape) const { return veil::reshape(*this, new_shape); }
template <class T>
Tensor<T> Tensor<T>::permute(const Shape& order) const { return veil::permute(*this, order); }
template <class T>
Tensor<T> Tensor<T>::transpose(Index dim0, Index dim1) const { return veil::transpose(*this, dim0, dim1); }

}  // namespace veil

// Matrix products through Eigen's GEMM, with NumPy/PyTorch matmul semantics.
//
// Glossary: a: [..., M, K], b: [..., K, N] -> [..., M, N]. "..." are batch dimensions, broadcast
// NumPy-style. A 1-d a is [K], read as [1, K] with M dropped from the result; a 1-d b is [K], read
// as [K, 1] with N dropped (torch.matmul). Both 1-d: the dot product, a 0-d tensor.
//
// Operands reach Eigen as Maps, without copying, when each matrix is row-major (unit column
// stride) or a transposed view (unit row stride, mapped column-major); anything else (stride-0
// expands, every-other-column slices) is copied once. A single product runs outside any parallel
// region so Eigen uses its own threads (veil::set_num_threads sets them); a batch is split over
// items by parallel_for, inside which Eigen runs serially.
#pragma once

#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "veil/ops/elementwise.hpp"
#include "veil/ops/shape_ops.hpp"

namespace veil {

namespace detail {

template <class T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

/// How one [rows, cols] matrix of an operand is handed to Eigen.
struct MatrixLayout {
  bool row_major = true;
  Index leading = 1;  // Eigen's outer stride: distance between rows (row-major) or columns
};

/// The layout that maps (rows, cols, row_stride, col_stride) without copying, if there is one.
/// Strides of an extent-1 dimension are never followed, so they do not constrain the choice.
inline std::optional<MatrixLayout> mappable_layout(Index rows, Index cols, Index row_stride, Index col_stride) {
  if ((cols <= 1 || col_stride == 1) && (rows <= 1 || row_stride >= std::max<Index>(cols, 1)))
    return MatrixLayout{true, rows <= 1 ? std::max<Index>(cols, 1) : row_stride};
  if ((rows <= 1 || row_stride == 1) && (cols <= 1 || col_stride >= std::max<Index>(rows, 1)))
    return MatrixLayout{false, cols <= 1 ? std::max<Index>(rows, 1) : col_stride};
  return std::nullopt;
}

/// x, or a contiguous copy of it when its matrices cannot be mapped; plus their layout.
template <class T>
std::pair<Tensor<T>, MatrixLayout> as_mappable(const Tensor<T>& x) {
  const Index rank = x.dim();
  const auto layout = mappable_layout(x.shape()[rank - 2], x.shape()[rank - 1], x.strides()[rank - 2],
                                      x.strides()[rank - 1]);
  if (layout) return {x, *layout};
  return {copy_contiguous(x), MatrixLayout{true, std::max<Index>(x.shape()[rank - 1], 1)}};
}

/// Calls fn with an Eigen Map of the [rows, cols] matrix at `data`.
template <class T, class Fn>
void with_matrix_map(const T* data, Index rows, Index cols, const MatrixLayout& layout, Fn&& fn) {
  using Stride = Eigen::OuterStride<>;
  if (layout.row_major)
    fn(Eigen::Map<const RowMajorMatrix<T>, Eigen::Unaligned, Stride>(data, rows, cols, Stride(layout.leading)));
  else
    fn(Eigen::Map<const ColMajorMatrix<T>, Eigen::Unaligned, Stride>(data, rows, cols, Stride(layout.leading)));
}

/// The last two dimensions swapped, as a view (no history).
template <class T>
Tensor<T> swap_last_two(const Tensor<T>& x) {
  Shape shape = x.shape(), strides = x.strides();
  std::swap(shape[shape.size() - 2], shape[shape.size() - 1]);
  std::swap(strides[strides.size() - 2], strides[strides.size() - 1]);
  return Tensor<T>::view_of(x, shape, strides, x.offset());
}

/// a: [...a, M, K], b: [...b, K, N], both of rank >= 2 with broadcastable batch dimensions and
/// equal K (checked by the caller) -> out: [broadcast(...a, ...b), M, N], contiguous.
template <class T>
Tensor<T> matmul_forward(const Tensor<T>& a, const Tensor<T>& b) {
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
  const Index m = a.size(-2), k = a.size(-1), n = b.size(-1);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor<T> out = Tensor<T>::empty(out_shape);
  if (out.numel() == 0) return out;
  if (k == 0) {
    std::fill(out.data(), out.data() + out.numel(), T(0));
    return out;
  }

  // A batched a against one matrix b is one tall product: [B·M, K] x [K, N] (B the batch count).
  Tensor<T> lhs = a;
  Shape lhs_batch = a_batch, items_shape = batch;
  Index rows = m;
  if (b.dim() == 2 && a.dim() > 2 && a.is_contiguous()) {
    rows = a.numel() / k;
    lhs = Tensor<T>::view_of(a, {rows, k}, {k, 1}, a.offset());
    lhs_batch.clear();
    items_shape.clear();
  }
  // Plain variables, not structured bindings: the lambdas below use them, and clang before 16
  // cannot capture a structured binding.
  const auto left_mapped = as_mappable(lhs), right_mapped = as_mappable(b);
  const Tensor<T>& left = left_mapped.first;
  const Tensor<T>& right = right_mapped.first;
  const MatrixLayout& left_layout = left_mapped.second;
  const MatrixLayout& right_layout = right_mapped.second;

  const Shape left_strides = broadcast_strides(
      lhs_batch, Shape(left.strides().begin(), left.strides().end() - 2), items_shape);
  const Shape right_strides = broadcast_strides(
      b_batch, Shape(right.strides().begin(), right.strides().end() - 2), items_shape);
  const T* left_base = left.storage()->data();
  const T* right_base = right.storage()->data();
  T* out_base = out.data();
  const Index items = numel_of(items_shape);

  const auto product = [&](Index item) {
    Index left_offset = left.offset(), right_offset = right.offset(), rest = item;
    for (Index d = static_cast<Index>(items_shape.size()) - 1; d >= 0; --d) {
      const Index index = rest % items_shape[d];
      rest /= items_shape[d];
      left_offset += index * left_strides[d];
      right_offset += index * right_strides[d];
    }
    Eigen::Map<RowMajorMatrix<T>> result(out_base + item * rows * n, rows, n);
    with_matrix_map(left_base + left_offset, rows, k, left_layout, [&](const auto& left_matrix) {
      with_matrix_map(right_base + right_offset, k, n, right_layout,
                      [&](const auto& right_matrix) { result.noalias() = left_matrix * right_matrix; });
    });
  };
  if (items == 1) {
    product(0);
    return out;
  }
  const Index flops_per_item = rows * k * n;
  parallel_for(0, items, std::max<Index>(1, (Index{1} << 18) / flops_per_item), [&](Index begin, Index end) {
    for (Index item = begin; item < end; ++item) product(item);
  });
  return out;
}

}  // namespace detail

/// Matrix product with broadcast batch dimensions; see the glossary at the top of this file.
/// Backward: da = dy bᵀ, db = aᵀ dy, each summed over the batch dimensions its operand was
/// broadcast along, and computed only for inputs that need a gradient.
template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>, "matmul: T must be a number type");
  VEIL_CHECK(a.dim() >= 1 && b.dim() >= 1, ShapeError, "matmul: both operands need at least 1 dimension, got a of shape ",
             to_string(a.shape()), " and b of shape ", to_string(b.shape()));
  const Tensor<T> a_matrix = a.dim() == 1 ? Tensor<T>::view_of(a, {1, a.shape()[0]}, {a.shape()[0] * a.strides()[0], a.strides()[0]}, a.offset())
                                          : a.detach();
  const Tensor<T> b_matrix = b.dim() == 1 ? Tensor<T>::view_of(b, {b.shape()[0], 1}, {b.strides()[0], 1}, b.offset())
                                          : b.detach();
  VEIL_CHECK(a_matrix.size(-1) == b_matrix.size(-2), ShapeError, "matmul: a of shape ", to_string(a.shape()),
             " and b of shape ", to_string(b.shape()), " do not fit: expected b's dimension ", b.dim() == 1 ? 0 : b.dim() - 2,
             " to equal a's last dimension (", a_matrix.size(-1), "), got ", b_matrix.size(-2));
  const Shape a_batch(a_matrix.shape().begin(), a_matrix.shape().end() - 2);
  const Shape b_batch(b_matrix.shape().begin(), b_matrix.shape().end() - 2);
  for (std::size_t i = 1; i <= std::min(a_batch.size(), b_batch.size()); ++i) {
    const Index ea = a_batch[a_batch.size() - i], eb = b_batch[b_batch.size() - i];
    VEIL_CHECK(ea == eb || ea == 1 || eb == 1, ShapeError, "matmul: batch dimensions of a of shape ",
               to_string(a.shape()), " and b of shape ", to_string(b.shape()), " do not broadcast: ", to_string(a_batch),
               " vs ", to_string(b_batch));
  }

  const Tensor<T> full = detail::matmul_forward(a_matrix, b_matrix);  // [..., M, N]
  Shape shape(full.shape().begin(), full.shape().end() - 2);
  if (a.dim() > 1) shape.push_back(full.size(-2));
  if (b.dim() > 1) shape.push_back(full.size(-1));
  Tensor<T> out = Tensor<T>::view_of(full, shape, contiguous_strides(shape), full.offset());
  return autograd::record<T>(
      "matmul", out, {&a, &b},
      [a_matrix, b_matrix, full_shape = full.shape(), a_shape = a.shape(), b_shape = b.shape()](
          const Tensor<T>& grad, const autograd::Node<T>& node) {
        const Tensor<T> g = reshape(grad, full_shape);  // [..., M, N]
        Tensor<T> grad_a, grad_b;
        if (node.needs_input_grad(0)) {
          const Tensor<T> full_grad = detail::matmul_forward(g, detail::swap_last_two(b_matrix));
          grad_a = reshape(detail::sum_to(full_grad, a_matrix.shape()), a_shape);
        }
        if (node.needs_input_grad(1)) {
          if (b_matrix.dim() == 2 && g.dim() > 2) {
            // Σ over batch items of aᵢᵀ gᵢ is one product of the stacked rows: [B·M, K]ᵀ [B·M, N].
            Index rows = 1;
            for (Index d = 0; d + 1 < g.dim(); ++d) rows *= g.shape()[d];
            const Tensor<T> a_rows = reshape(a_matrix, {rows, a_matrix.size(-1)});
            const Tensor<T> g_rows = reshape(g, {rows, g.size(-1)});
            grad_b = reshape(detail::matmul_forward(detail::swap_last_two(a_rows), g_rows), b_shape);
          } else {
            const Tensor<T> full_grad = detail::matmul_forward(detail::swap_last_two(a_matrix), g);
            grad_b = reshape(detail::sum_to(full_grad, b_matrix.shape()), b_shape);
          }
        }
        return std::vector<Tensor<T>>{grad_a, grad_b};
      });
}

}  // namespace veil

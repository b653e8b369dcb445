// Embedding lookup: gather rows of a table by index; backward scatter-adds the gradient rows
// back into the table.
//
// Glossary: V rows in the table (num_embeddings), E features per row (embedding_dim), n lookups
// (numel of indices).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "veil/autograd/node.hpp"
#include "veil/tensor/creation.hpp"

namespace veil {

namespace detail {

/// "[1, 2]": the multi-index of element `linear` of a row-major tensor of `shape`, as error
/// messages spell a position ("[3]" in 1-d, "[]" for a 0-d tensor).
inline std::string index_string(const Shape& shape, Index linear) {
  Shape index(shape.size(), 0);
  for (std::size_t d = shape.size(); d-- > 0;) {
    index[d] = shape[d] == 0 ? 0 : linear % shape[d];
    linear = shape[d] == 0 ? 0 : linear / shape[d];
  }
  return to_string(index);
}

/// table: [V, E] contiguous; rows: [n] in [0, V)  ->  out: [n, E].
template <class T>
void embedding_forward(const T* table, const std::int64_t* rows, T* out, Index lookups, Index features) {
  const Index grain_lookups = std::max<Index>(1, elementwise_grain / std::max<Index>(features, 1));
  parallel_for(0, lookups, grain_lookups, [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i) std::copy_n(table + rows[i] * features, features, out + i * features);
  });
}

/// grad_output: [n, E] contiguous; rows: [n] in [0, V)  ->  dtable: [V, E] (overwritten).
/// Lookups are bucketed by table row (a counting sort that keeps lookup order), then each table
/// row sums its gradient rows in lookup order. One thread owns each table row, so there are no
/// atomics, and the sum order is that of a serial scatter, whatever the thread count.
template <class T>
void embedding_backward(const T* grad_output, const std::int64_t* rows, T* dtable, Index lookups, Index table_rows,
                        Index features) {
  std::vector<Index> bucket_start(static_cast<std::size_t>(table_rows + 1), 0);
  for (Index i = 0; i < lookups; ++i) ++bucket_start[static_cast<std::size_t>(rows[i] + 1)];
  for (Index v = 0; v < table_rows; ++v) bucket_start[v + 1] += bucket_start[v];
  std::vector<Index> lookups_by_row(static_cast<std::size_t>(lookups));
  std::vector<Index> fill = bucket_start;
  for (Index i = 0; i < lookups; ++i) lookups_by_row[static_cast<std::size_t>(fill[rows[i]]++)] = i;

  const Index grain_rows = std::max<Index>(1, elementwise_grain / std::max<Index>(features, 1));
  parallel_for(0, table_rows, grain_rows, [&](Index begin, Index end) {
    for (Index v = begin; v < end; ++v) {
      T* target = dtable + v * features;
      std::fill_n(target, features, T(0));
      for (Index k = bucket_start[v]; k < bucket_start[v + 1]; ++k) {
        const T* source = grad_output + lookups_by_row[k] * features;
        for (Index j = 0; j < features; ++j) target[j] += source[j];
      }
    }
  });
}

}  // namespace detail

/// Rows of `weight` picked by `indices`, like torch.nn.functional.embedding.
/// weight: [V, E]; indices: any shape, values in [0, V)  ->  [*indices.shape, E].
/// Every index is checked before any work: one out of range throws ValueError naming its
/// position, its value and the range. The gradient flows to weight only.
template <class T>
Tensor<T> embedding(const Tensor<T>& weight, const Tensor<std::int64_t>& indices) {
  VEIL_CHECK(weight.defined() && indices.defined(), ValueError, "embedding: weight and indices must be defined tensors");
  VEIL_CHECK(weight.dim() == 2, ShapeError, "embedding: weight must be 2-d [num_embeddings, embedding_dim], got shape ",
             to_string(weight.shape()));
  const Index table_rows = weight.shape()[0];
  const Index features = weight.shape()[1];
  const Tensor<std::int64_t> rows = indices.is_contiguous() ? indices : detail::copy_contiguous(indices);
  const std::int64_t* row_data = rows.data();
  const Index lookups = rows.numel();
  for (Index i = 0; i < lookups; ++i)
    VEIL_CHECK(row_data[i] >= 0 && row_data[i] < table_rows, ValueError, "embedding: indices",
               detail::index_string(indices.shape(), i), " = ", row_data[i], " is out of range [0, ", table_rows, ")");

  const Tensor<T> table = weight.is_contiguous() ? weight : detail::copy_contiguous(weight);
  Shape shape = indices.shape();
  shape.push_back(features);
  Tensor<T> out = Tensor<T>::empty(shape);
  detail::embedding_forward(table.data(), row_data, out.data(), lookups, features);

  return autograd::record<T>("embedding", out, {&weight},
                             [rows = rows.detach(), table_shape = weight.shape()](const Tensor<T>& grad_output) {
                               const Tensor<T> dy = grad_output.is_contiguous() ? grad_output
                                                                                 : detail::copy_contiguous(grad_output);
                               Tensor<T> dweight = Tensor<T>::empty(table_shape);
                               detail::embedding_backward(dy.data(), rows.data(), dweight.data(), rows.numel(),
                                                          table_shape[0], table_shape[1]);
                               return std::vector<Tensor<T>>{dweight};
                             });
}

}  // namespace veil

// Tensor<T>: shared storage + shape + strides + offset + an autograd slot. THE core type.
//
// A Tensor is a handle: copies share the same TensorImpl (like torch::Tensor). Views (reshape,
// permute, slice, expand, ...) share storage and differ in shape/strides/offset. Element types:
// float and double (differentiable), std::int64_t (indices, targets) and bool (masks).
//
// The autograd slot (requires_grad, grad, grad_fn) lives here so a tensor knows its history;
// the machinery that uses it is in autograd/. Members that record autograd history (backward,
// contiguous, reshape, ...) are defined there and in ops/: include <veil/veil.hpp> to use them.
#pragma once

#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "veil/core/check.hpp"
#include "veil/core/types.hpp"
#include "veil/tensor/shape.hpp"
#include "veil/tensor/storage.hpp"

namespace veil {

namespace autograd {
template <class T>
class Node;
}

template <class T>
class Tensor;

namespace detail {

template <class T>
struct TensorImpl {
  std::shared_ptr<Storage<T>> storage;
  Shape shape;
  Shape strides;
  Index offset = 0;

  // Autograd slot. grad_fn is null for leaves; grad is accumulated into leaves only.
  bool requires_grad = false;
  std::shared_ptr<autograd::Node<T>> grad_fn;
  std::shared_ptr<TensorImpl<T>> grad;
  std::mutex grad_mutex;  // backward from several threads into one shared leaf
};

}  // namespace detail

template <class T>
class Tensor {
 public:
  using value_type = T;
  static constexpr bool is_differentiable = std::is_floating_point_v<T>;

  /// An undefined tensor (no storage); `defined()` is false.
  Tensor() = default;

  /// Uninitialised contiguous tensor of `shape`.
  static Tensor empty(const Shape& shape) {
    const Index count = numel_of(shape);
    auto impl = std::make_shared<detail::TensorImpl<T>>();
    impl->storage = std::make_shared<Storage<T>>(count);
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    return Tensor(std::move(impl));
  }

  /// A view of `base`'s storage with the given geometry (no autograd history).
  static Tensor view_of(const Tensor& base, Shape shape, Shape strides, Index offset) {
    auto impl = std::make_shared<detail::TensorImpl<T>>();
    impl->storage = base.impl_->storage;
    impl->shape = std::move(shape);
    impl->strides = std::move(strides);
    impl->offset = offset;
    return Tensor(std::move(impl));
  }

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  Index offset() const { return impl().offset; }
  Index dim() const { return static_cast<Index>(impl().shape.size()); }
  /// Extent of dimension d (negative counts from the end).
  Index size(Index d) const {
    VEIL_CHECK(dim() > 0, ShapeError, "size: a 0-d tensor has no dimension ", d, " (its shape is [])");
    return impl().shape[static_cast<std::size_t>(wrap_dim(d, dim()))];
  }
  Index numel() const {
    Index count = 1;
    for (Index extent : impl().shape) count *= extent;
    return count;
  }

  bool is_contiguous() const {
    if (numel() == 0) return true;  // no element to be out of place (and empty() makes extent-0 strides 1)
    Index expected = 1;
    for (std::size_t d = impl().shape.size(); d-- > 0;) {
      if (impl().shape[d] == 1) continue;
      if (impl().strides[d] != expected) return false;
      expected *= impl().shape[d];
    }
    return true;
  }

  /// Pointer to the element at index 0 (storage + offset). Writes through it bypass autograd.
  T* data() const {
    T* base = impl().storage->data();
    return base ? base + impl().offset : nullptr;  // no elements, no buffer: a view's offset has nothing to point into
  }
  const std::shared_ptr<Storage<T>>& storage() const { return impl().storage; }
  /// True when both handles see the same storage.
  bool shares_storage_with(const Tensor& other) const { return impl().storage == other.impl().storage; }

  /// Element at a multi-index (for tests and small work; not a hot path).
  T at(const Shape& index) const {
    VEIL_CHECK(static_cast<Index>(index.size()) == dim(), ShapeError, "at: expected ", dim(),
               " indices for a tensor of shape ", to_string(shape()), ", got ", index.size());
    Index position = impl().offset;
    for (std::size_t d = 0; d < index.size(); ++d) {
      VEIL_CHECK(index[d] >= 0 && index[d] < impl().shape[d], ValueError, "at: index ", index[d], " out of range [0, ",
                 impl().shape[d], ") in dimension ", d, " of shape ", to_string(shape()));
      position += index[d] * impl().strides[d];
    }
    return impl().storage->data()[position];
  }

  /// The elements in row-major order.
  std::vector<T> to_vector() const;
  /// The only element of a one-element tensor.
  T item() const {
    VEIL_CHECK(numel() == 1, ShapeError, "item: expected a tensor with one element, got shape ", to_string(shape()));
    return *data();
  }

  // ---- autograd slot -------------------------------------------------------------------------

  bool requires_grad() const { return impl().requires_grad; }
  /// Marks a leaf as needing a gradient. Only floating-point leaves can.
  Tensor& set_requires_grad(bool value = true) {
    if constexpr (!is_differentiable) {
      VEIL_CHECK(!value, ValueError, "set_requires_grad: only float and double tensors can require a gradient");
    }
    VEIL_CHECK(impl().grad_fn == nullptr, AutogradError,
               "set_requires_grad: only leaf tensors can be marked; this one was computed by an op (use detach())");
    impl_->requires_grad = value;
    return *this;
  }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  /// Accumulated gradient of a leaf; undefined until a backward pass reaches it.
  Tensor grad() const {
    auto& self = impl();  // throws on an undefined tensor before the mutex is touched
    std::lock_guard<std::mutex> lock(self.grad_mutex);
    return self.grad ? Tensor(self.grad) : Tensor();
  }
  /// Drops the accumulated gradient.
  void zero_grad() const {
    auto& self = impl();
    std::lock_guard<std::mutex> lock(self.grad_mutex);
    self.grad.reset();
  }
  const std::shared_ptr<autograd::Node<T>>& grad_fn() const { return impl().grad_fn; }

  /// Same data, no history: the result is a leaf that does not require grad.
  Tensor detach() const { return view_of(*this, shape(), strides(), offset()); }

  /// Backpropagates from this scalar (gradient 1) or with an explicit upstream gradient of this
  /// tensor's shape. Defined in autograd/engine.hpp.
  void backward(bool retain_graph = false) const;
  void backward(const Tensor& grad_output, bool retain_graph = false) const;

  // Differentiable members; defined in ops/shape_ops.hpp.
  Tensor contiguous() const;
  Tensor reshape(const Shape& new_shape) const;
  Tensor permute(const Shape& order) const;
  Tensor transpose(Index dim0, Index dim1) const;

  // ---- internals used by autograd and ops ------------------------------------------------------
  explicit Tensor(std::shared_ptr<detail::TensorImpl<T>> impl) : impl_(std::move(impl)) {}
  const std::shared_ptr<detail::TensorImpl<T>>& impl_ptr() const { return impl_; }
  detail::TensorImpl<T>& impl() const {
    VEIL_CHECK(impl_ != nullptr, ValueError, "tensor: operation on an undefined tensor");
    return *impl_;
  }

 private:
  std::shared_ptr<detail::TensorImpl<T>> impl_;
};

namespace detail {

/// Calls fn(linear_output_index, source_offset) over every element of `t` in row-major order.
template <class T, class Fn>
void for_each_offset(const Tensor<T>& t, Fn&& fn) {
  const Index count = t.numel();
  if (count == 0) return;
  const Index rank = t.dim();
  if (rank == 0) {
    fn(Index{0}, t.offset());
    return;
  }
  Shape index(static_cast<std::size_t>(rank), 0);
  Index position = t.offset();
  const auto& shape = t.shape();
  const auto& strides = t.strides();
  for (Index linear = 0; linear < count; ++linear) {
    fn(linear, position);
    for (Index d = rank - 1; d >= 0; --d) {
      if (++index[d] < shape[d]) {
        position += strides[d];
        break;
      }
      position -= strides[d] * (shape[d] - 1);
      index[d] = 0;
    }
  }
}

}  // namespace detail

template <class T>
std::vector<T> Tensor<T>::to_vector() const {
  std::vector<T> out(static_cast<std::size_t>(numel()));
  const T* base = impl().storage ? impl().storage->data() : nullptr;
  detail::for_each_offset(*this, [&](Index linear, Index position) { out[linear] = base[position]; });
  return out;
}

}  // namespace veil

// Gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ with norm_type = 2: the L2 norm of
// all gradients taken together (as if concatenated into one vector) is computed, and when it
// exceeds max_norm every gradient is scaled in place by max_norm / (norm + 1e-6) (Pascanu et al.
// 2013; the 1e-6 is PyTorch's, it keeps the coefficient finite for a zero norm).
//
// Determinism: squares are summed in double over fixed chunks of `clip_chunk` elements; the
// chunk partials are added in order, so the norm has the same bits for any thread count.
//
// Non-finite norm (a NaN or ±inf in some gradient): the gradients are left unchanged and the
// norm is returned, so the caller can test std::isfinite(norm) and skip the step. This differs
// from PyTorch's default (error_if_nonfinite = false), which scales anyway: by 0 for an infinite
// norm (silently zeroing every finite gradient while NaNs stay NaN) or by NaN for a NaN norm.
// With error_if_nonfinite = true a veil::ValueError is thrown before any gradient changes.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "veil/nn/module.hpp"

namespace veil::optim {

struct ClipGradNormOptions {
  bool error_if_nonfinite = false;  // throw ValueError on a NaN/inf norm instead of returning it
};

namespace detail {

inline constexpr Index clip_chunk = 4096;

/// Sum of squares of `values`, in double, over fixed chunks combined in order.
template <class T>
double sum_of_squares(const T* values, Index count) {
  const Index chunks = (count + clip_chunk - 1) / clip_chunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(0, chunks, 8, [&](Index begin, Index end) {
    for (Index chunk = begin; chunk < end; ++chunk) {
      double total = 0.0;
      const Index last = std::min(count, (chunk + 1) * clip_chunk);
      for (Index i = chunk * clip_chunk; i < last; ++i) total += static_cast<double>(values[i]) * values[i];
      partial[static_cast<std::size_t>(chunk)] = total;
    }
  });
  double total = 0.0;
  for (double value : partial) total += value;
  return total;
}

}  // namespace detail

/// Clips the gradients of `parameters` to a total L2 norm of at most `max_norm` (>= 0; +inf
/// never clips) and returns the total norm before clipping. Parameters without a gradient are
/// skipped; with no gradients at all the norm is 0.
template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& parameters, double max_norm, ClipGradNormOptions options = {}) {
  VEIL_CHECK(max_norm >= 0.0, ValueError, "clip_grad_norm: max_norm must be >= 0, got ", max_norm);
  std::vector<Tensor<T>> grads;
  for (const auto& parameter : parameters) {
    VEIL_CHECK(parameter.defined(), ValueError, "clip_grad_norm: parameters[", grads.size(), "] is undefined");
    Tensor<T> grad = parameter.grad();
    if (grad.defined()) grads.push_back(grad);
  }
  double sum = 0.0;
  for (const auto& grad : grads) {
    const Tensor<T> values = grad.is_contiguous() ? grad : veil::detail::copy_contiguous(grad);
    sum += detail::sum_of_squares(values.data(), values.numel());
  }
  const double norm = std::sqrt(sum);
  if (!std::isfinite(norm)) {
    VEIL_CHECK(!options.error_if_nonfinite, ValueError, "clip_grad_norm: the total norm of the gradients is ", norm,
               "; expected a finite norm (error_if_nonfinite = true)");
    return norm;
  }
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return norm;  // PyTorch multiplies by min(coefficient, 1): nothing to do
  const T scale = static_cast<T>(coefficient);
  NoGradGuard no_grad;
  for (const auto& grad : grads) {
    // Leaf gradients are contiguous: autograd/engine.hpp stores a contiguous copy.
    VEIL_DEBUG_ASSERT(grad.is_contiguous());
    T* values = grad.data();
    parallel_for(0, grad.numel(), veil::detail::elementwise_grain, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) values[i] *= scale;
    });
  }
  return norm;
}

/// Same, for named parameters (model.named_parameters()).
template <class T>
double clip_grad_norm(const nn::NamedTensors<T>& parameters, double max_norm, ClipGradNormOptions options = {}) {
  std::vector<Tensor<T>> tensors;
  for (const auto& [name, tensor] : parameters) tensors.push_back(tensor);
  return clip_grad_norm(tensors, max_norm, options);
}

}  // namespace veil::optim

// Layer normalisation over the trailing dimensions, fused: forward saves the per-row mean and
// rstd = 1/sqrt(var + eps), and backward computes dx, dweight and dbias from them in one pass
// per row (the llm.c layernorm_forward/layernorm_backward pair).
//
// Glossary: a "row" is one slice over normalized_shape; M rows of N = numel(normalized_shape)
// elements each. x: [..., *normalized_shape] viewed as [M, N].
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "veil/autograd/node.hpp"
#include "veil/tensor/creation.hpp"

namespace veil {

namespace detail {

/// Rows are grouped in blocks of this many for the dweight/dbias reduction: each block sums its
/// rows in order, then the blocks are summed in block order. The split depends only on M, never
/// on the thread count, so the gradients are bit-identical for any number of threads.
inline constexpr Index layer_norm_row_block = 32;

/// x: [M, N] contiguous -> y: [M, N], mean: [M], rstd: [M]. weight, bias: [N] or null.
/// Statistics are accumulated in double with two passes (mean, then squared deviations), so
/// float inputs with a large common offset keep their variance.
template <class T>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd, Index rows, Index cols,
                        double eps) {
  const Index grain_rows = std::max<Index>(1, elementwise_grain / std::max<Index>(cols, 1));
  parallel_for(0, rows, grain_rows, [&](Index begin, Index end) {
    for (Index r = begin; r < end; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      double sum = 0.0;
      for (Index j = 0; j < cols; ++j) sum += static_cast<double>(xr[j]);
      const double row_mean = sum / static_cast<double>(cols);
      double squares = 0.0;
      for (Index j = 0; j < cols; ++j) {
        const double centred = static_cast<double>(xr[j]) - row_mean;
        squares += centred * centred;
      }
      const double row_rstd = 1.0 / std::sqrt(squares / static_cast<double>(cols) + eps);
      for (Index j = 0; j < cols; ++j) {
        double value = (static_cast<double>(xr[j]) - row_mean) * row_rstd;
        if (weight != nullptr) value *= static_cast<double>(weight[j]);
        if (bias != nullptr) value += static_cast<double>(bias[j]);
        yr[j] = static_cast<T>(value);
      }
      mean[r] = static_cast<T>(row_mean);
      rstd[r] = static_cast<T>(row_rstd);
    }
  });
}

/// dy, x: [M, N] contiguous; mean, rstd: [M]; weight: [N] or null.
/// dx: [M, N] or null; dweight, dbias: [N] or null (each written only when non-null).
/// With x̂ = (x - mean) rstd and g = dy w:  dx = rstd (g - mean(g) - x̂ mean(g x̂)),
/// dweight = Σ_rows dy x̂,  dbias = Σ_rows dy.
template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* mean, const T* rstd, const T* weight, T* dx, T* dweight,
                         T* dbias, Index rows, Index cols) {
  const bool wants_params = dweight != nullptr || dbias != nullptr;
  const Index blocks = (rows + layer_norm_row_block - 1) / layer_norm_row_block;
  // Per-block partial sums of dy x̂ and dy: [blocks, N] each.
  std::vector<double> partial_dweight(wants_params ? static_cast<std::size_t>(blocks * cols) : 0, 0.0);
  std::vector<double> partial_dbias(wants_params ? static_cast<std::size_t>(blocks * cols) : 0, 0.0);
  const Index grain_blocks = std::max<Index>(1, elementwise_grain / std::max<Index>(cols * layer_norm_row_block, 1));
  parallel_for(0, blocks, grain_blocks, [&](Index first_block, Index last_block) {
    for (Index block = first_block; block < last_block; ++block) {
      double* block_dweight = wants_params ? partial_dweight.data() + block * cols : nullptr;
      double* block_dbias = wants_params ? partial_dbias.data() + block * cols : nullptr;
      const Index row_end = std::min(rows, (block + 1) * layer_norm_row_block);
      for (Index r = block * layer_norm_row_block; r < row_end; ++r) {
        const T* dyr = dy + r * cols;
        const T* xr = x + r * cols;
        const double row_mean = static_cast<double>(mean[r]);
        const double row_rstd = static_cast<double>(rstd[r]);
        if (dx != nullptr) {
          double sum_g = 0.0;
          double sum_g_xhat = 0.0;
          for (Index j = 0; j < cols; ++j) {
            const double xhat = (static_cast<double>(xr[j]) - row_mean) * row_rstd;
            const double g = static_cast<double>(dyr[j]) * (weight ? static_cast<double>(weight[j]) : 1.0);
            sum_g += g;
            sum_g_xhat += g * xhat;
          }
          const double mean_g = sum_g / static_cast<double>(cols);
          const double mean_g_xhat = sum_g_xhat / static_cast<double>(cols);
          T* dxr = dx + r * cols;
          for (Index j = 0; j < cols; ++j) {
            const double xhat = (static_cast<double>(xr[j]) - row_mean) * row_rstd;
            const double g = static_cast<double>(dyr[j]) * (weight ? static_cast<double>(weight[j]) : 1.0);
            dxr[j] = static_cast<T>(row_rstd * (g - mean_g - xhat * mean_g_xhat));
          }
        }
        if (wants_params) {
          for (Index j = 0; j < cols; ++j) {
            const double xhat = (static_cast<double>(xr[j]) - row_mean) * row_rstd;
            block_dweight[j] += static_cast<double>(dyr[j]) * xhat;
            block_dbias[j] += static_cast<double>(dyr[j]);
          }
        }
      }
    }
  });
  if (!wants_params) return;
  parallel_for(0, cols, elementwise_grain / std::max<Index>(blocks, 1), [&](Index begin, Index end) {
    for (Index j = begin; j < end; ++j) {
      double total_dweight = 0.0;
      double total_dbias = 0.0;
      for (Index block = 0; block < blocks; ++block) {
        total_dweight += partial_dweight[block * cols + j];
        total_dbias += partial_dbias[block * cols + j];
      }
      if (dweight != nullptr) dweight[j] = static_cast<T>(total_dweight);
      if (dbias != nullptr) dbias[j] = static_cast<T>(total_dbias);
    }
  });
}

}  // namespace detail

/// Normalises x over its trailing dimensions `normalized_shape`, then scales by weight and adds
/// bias (each optional: pass an undefined Tensor<T>()), like torch.nn.functional.layer_norm.
/// x: [..., *normalized_shape]; weight, bias: normalized_shape  ->  [..., *normalized_shape].
/// The variance is the biased one (divides by N), as in PyTorch. eps must be finite and >= 0.
template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const Shape& normalized_shape, const Tensor<T>& weight = Tensor<T>(),
                     const Tensor<T>& bias = Tensor<T>(), double eps = 1e-5) {
  static_assert(std::is_floating_point_v<T>, "layer_norm: T must be float or double");
  const Index trailing = static_cast<Index>(normalized_shape.size());
  VEIL_CHECK(trailing >= 1, ShapeError, "layer_norm: normalized_shape must have at least one dimension, got []");
  VEIL_CHECK(x.dim() >= trailing, ShapeError, "layer_norm: input of shape ", to_string(x.shape()),
             " has fewer dimensions than normalized_shape ", to_string(normalized_shape));
  const Shape x_trailing(x.shape().end() - trailing, x.shape().end());
  VEIL_CHECK(x_trailing == normalized_shape, ShapeError, "layer_norm: input of shape ", to_string(x.shape()),
             " must end in normalized_shape ", to_string(normalized_shape), ", but its trailing dimensions are ",
             to_string(x_trailing));
  VEIL_CHECK(!weight.defined() || weight.shape() == normalized_shape, ShapeError, "layer_norm: weight must have shape ",
             to_string(normalized_shape), " (normalized_shape), got ", to_string(weight.shape()));
  VEIL_CHECK(!bias.defined() || bias.shape() == normalized_shape, ShapeError, "layer_norm: bias must have shape ",
             to_string(normalized_shape), " (normalized_shape), got ", to_string(bias.shape()));
  VEIL_CHECK(std::isfinite(eps) && eps >= 0.0, ValueError, "layer_norm: eps must be finite and >= 0, got ", eps);

  const Index cols = numel_of(normalized_shape);
  const Index rows = cols == 0 ? 0 : x.numel() / cols;
  const auto contiguous_data = [](const Tensor<T>& t) { return t.is_contiguous() ? t : detail::copy_contiguous(t); };
  const Tensor<T> x_data = contiguous_data(x);
  const Tensor<T> weight_data = weight.defined() ? contiguous_data(weight) : Tensor<T>();
  const Tensor<T> bias_data = bias.defined() ? contiguous_data(bias) : Tensor<T>();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  Tensor<T> mean = Tensor<T>::empty({rows});
  Tensor<T> rstd = Tensor<T>::empty({rows});
  detail::layer_norm_forward(x_data.data(), weight.defined() ? weight_data.data() : nullptr,
                             bias.defined() ? bias_data.data() : nullptr, out.data(), mean.data(), rstd.data(), rows,
                             cols, eps);

  return autograd::record<T>(
      "layer_norm", out, {&x, &weight, &bias},
      [x = x_data.detach(), weight = weight_data.defined() ? weight_data.detach() : Tensor<T>(), mean, rstd, rows,
       cols, normalized_shape](const Tensor<T>& grad_output, const autograd::Node<T>& node) {
        const Tensor<T> dy = grad_output.is_contiguous() ? grad_output : detail::copy_contiguous(grad_output);
        Tensor<T> dx, dweight, dbias;
        if (node.needs_input_grad(0)) dx = Tensor<T>::empty(x.shape());
        if (node.needs_input_grad(1)) dweight = Tensor<T>::empty(normalized_shape);
        if (node.needs_input_grad(2)) dbias = Tensor<T>::empty(normalized_shape);
        detail::layer_norm_backward(dy.data(), x.data(), mean.data(), rstd.data(),
                                    weight.defined() ? weight.data() : nullptr, dx.defined() ? dx.data() : nullptr,
                                    dweight.defined() ? dweight.data() : nullptr,
                                    dbias.defined() ? dbias.data() : nullptr, rows, cols);
        return std::vector<Tensor<T>>{dx, dweight, dbias};
      });
}

}  // namespace veil

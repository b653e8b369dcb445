// Cross-entropy as one fused op: log-softmax (max-subtracted) and negative log-likelihood per
// row, saving only the per-row logsumexp; backward is (softmax - onehot) scaled by the upstream
// gradient, recomputing softmax from the logits and the saved logsumexp.
//
// The class dimension is LAST: logits [..., C], targets [...]. PyTorch puts the classes at
// dim 1 for N-d input ([N, C, d1, ...]); for the usual [N, C] logits both conventions agree, and
// class-last matches nanoGPT's logits.view(-1, C) without a transpose.
//
// All targets ignored with Reduction::mean: PyTorch returns NaN (the mean of nothing, by design,
// PR #64572). veil returns 0 with a zero gradient instead, so a batch that happens to be all
// padding leaves the parameters unchanged rather than poisoning them with NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "veil/autograd/node.hpp"
#include "veil/ops/embedding.hpp"  // detail::index_string, for positions in error messages
#include "veil/tensor/creation.hpp"

namespace veil {

enum class Reduction {
  none,  // one loss per target, shape of targets (0 at ignored targets)
  mean,  // sum over non-ignored targets / their count (0 when every target is ignored)
  sum,   // sum over non-ignored targets
};

struct CrossEntropyOptions {
  std::int64_t ignore_index = -100;     // targets equal to this contribute no loss and no gradient
  Reduction reduction = Reduction::mean;
};

namespace detail {

/// logits: [M, C] contiguous; targets: [M]  ->  row_loss: [M], logsumexp: [M].
/// row_loss = logsumexp(row) - row[target], computed in double with the row max subtracted;
/// ignored rows get loss 0 (and an unused logsumexp of 0).
template <class T>
void cross_entropy_forward(const T* logits, const std::int64_t* targets, double* row_loss, T* logsumexp, Index rows,
                           Index classes, std::int64_t ignore_index) {
  const Index grain_rows = std::max<Index>(1, elementwise_grain / std::max<Index>(classes, 1));
  parallel_for(0, rows, grain_rows, [&](Index begin, Index end) {
    for (Index r = begin; r < end; ++r) {
      if (targets[r] == ignore_index) {
        row_loss[r] = 0.0;
        logsumexp[r] = T(0);
        continue;
      }
      const T* row = logits + r * classes;
      const double max = static_cast<double>(*std::max_element(row, row + classes));
      double sum = 0.0;
      for (Index j = 0; j < classes; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
      const double lse = max + std::log(sum);
      row_loss[r] = lse - static_cast<double>(row[targets[r]]);
      logsumexp[r] = static_cast<T>(lse);
    }
  });
}

/// logits: [M, C]; targets, logsumexp: [M]; grad_rows: upstream gradient of row r at
/// grad_rows[r * grad_stride] (stride 0 for a reduced loss), times `factor` (1/count for mean)
///   ->  dlogits: [M, C] = (softmax(row) - onehot(target)) * grad, 0 on ignored rows.
template <class T>
void cross_entropy_backward(const T* logits, const std::int64_t* targets, const T* logsumexp, const T* grad_rows,
                            Index grad_stride, double factor, T* dlogits, Index rows, Index classes,
                            std::int64_t ignore_index) {
  const Index grain_rows = std::max<Index>(1, elementwise_grain / std::max<Index>(classes, 1));
  parallel_for(0, rows, grain_rows, [&](Index begin, Index end) {
    for (Index r = begin; r < end; ++r) {
      T* drow = dlogits + r * classes;
      if (targets[r] == ignore_index) {
        std::fill_n(drow, classes, T(0));
        continue;
      }
      const T* row = logits + r * classes;
      const double grad = static_cast<double>(grad_rows[r * grad_stride]) * factor;
      const double lse = static_cast<double>(logsumexp[r]);
      for (Index j = 0; j < classes; ++j) drow[j] = static_cast<T>(std::exp(static_cast<double>(row[j]) - lse) * grad);
      drow[targets[r]] = static_cast<T>((std::exp(static_cast<double>(row[targets[r]]) - lse) - 1.0) * grad);
    }
  });
}

}  // namespace detail

/// Cross-entropy between unnormalised `logits` and class indices `targets`, like
/// torch.nn.functional.cross_entropy with the class dimension last.
/// logits: [..., C]; targets: [...] int64 in [0, C) or equal to options.ignore_index
///   ->  Reduction::none: [...];  mean, sum: [] (a scalar).
/// Every target is checked before any work: one out of range (and not ignore_index) throws
/// ValueError naming its position, its value and the range.
template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Tensor<std::int64_t>& targets,
                        const CrossEntropyOptions& options = {}) {
  static_assert(std::is_floating_point_v<T>, "cross_entropy: T must be float or double");
  VEIL_CHECK(logits.defined() && targets.defined(), ValueError,
             "cross_entropy: logits and targets must be defined tensors");
  VEIL_CHECK(logits.dim() >= 1, ShapeError, "cross_entropy: logits must have a class dimension [..., C], got shape ",
             to_string(logits.shape()));
  const Shape row_shape(logits.shape().begin(), logits.shape().end() - 1);
  VEIL_CHECK(targets.shape() == row_shape, ShapeError, "cross_entropy: targets must have shape ", to_string(row_shape),
             " (logits' shape ", to_string(logits.shape()), " without the class dimension), got ",
             to_string(targets.shape()));
  const Index classes = logits.shape().back();
  const Tensor<std::int64_t> target_data = targets.is_contiguous() ? targets : detail::copy_contiguous(targets);
  const std::int64_t* target_values = target_data.data();
  const Index rows = target_data.numel();
  const std::int64_t ignore_index = options.ignore_index;
  Index count = 0;  // targets that are not ignored
  for (Index r = 0; r < rows; ++r) {
    if (target_values[r] == ignore_index) continue;
    VEIL_CHECK(target_values[r] >= 0 && target_values[r] < classes, ValueError, "cross_entropy: targets",
               detail::index_string(targets.shape(), r), " = ", target_values[r], " is out of range [0, ", classes,
               ") and is not ignore_index (", ignore_index, ")");
    ++count;
  }

  const Tensor<T> logit_data = logits.is_contiguous() ? logits : detail::copy_contiguous(logits);
  std::vector<double> row_loss(static_cast<std::size_t>(rows));
  Tensor<T> logsumexp = Tensor<T>::empty({rows});
  detail::cross_entropy_forward(logit_data.data(), target_values, row_loss.data(), logsumexp.data(), rows, classes,
                                ignore_index);

  const Reduction reduction = options.reduction;
  Tensor<T> out;
  if (reduction == Reduction::none) {
    out = Tensor<T>::empty(row_shape);
    std::transform(row_loss.begin(), row_loss.end(), out.data(), [](double loss) { return static_cast<T>(loss); });
  } else {
    // Serial, in row order: the reduced loss is the same for every thread count.
    double total = 0.0;
    for (double loss : row_loss) total += loss;
    if (reduction == Reduction::mean) total = count == 0 ? 0.0 : total / static_cast<double>(count);
    out = scalar<T>(static_cast<T>(total));
  }

  return autograd::record<T>(
      "cross_entropy", out, {&logits},
      [logits = logit_data.detach(), targets = target_data.detach(), logsumexp, reduction, count,
       ignore_index](const Tensor<T>& grad_output) {
        const Tensor<T> dy = grad_output.is_contiguous() ? grad_output : detail::copy_contiguous(grad_output);
        const Index rows = targets.numel();
        const Index classes = logits.shape().back();
        double factor = 1.0;
        if (reduction == Reduction::mean) factor = count == 0 ? 0.0 : 1.0 / static_cast<double>(count);
        Tensor<T> dlogits = Tensor<T>::empty(logits.shape());
        detail::cross_entropy_backward(logits.data(), targets.data(), logsumexp.data(), dy.data(),
                                       reduction == Reduction::none ? 1 : 0, factor, dlogits.data(), rows, classes,
                                       ignore_index);
        return std::vector<Tensor<T>>{dlogits};
      });
}

}  // namespace veil

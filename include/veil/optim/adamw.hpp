// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", ICLR 2019, Algorithm 2), computed exactly as torch.optim.AdamW
// (amsgrad = false, maximize = false). For each parameter p with gradient g, at step t >= 1:
//
//   p  ← p · (1 − lr · weight_decay)          decay first, and not through the gradient
//   m  ← β1 · m + (1 − β1) · g
//   v  ← β2 · v + (1 − β2) · g²
//   p  ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
//
// eps sits outside the square root of the bias-corrected second moment, as in PyTorch and in
// Kingma & Ba's Algorithm 1. Scalars (step size, bias corrections) are formed in double, then
// each element is updated in T, in the operation order of PyTorch's CPU kernels (mul_/add_,
// addcmul_, addcdiv_), so float results track torch's closely. State per parameter: "exp_avg" (m), "exp_avg_sq" (v), "step" (t).
#pragma once

#include <cmath>

#include "veil/optim/optimizer.hpp"

namespace veil::optim {

struct AdamWOptions {
  double lr = 1e-3;            // learning rate; >= 0
  double beta1 = 0.9;          // decay of the first-moment average; in [0, 1)
  double beta2 = 0.999;        // decay of the second-moment average; in [0, 1)
  double eps = 1e-8;           // added to the corrected RMS, outside the square root; >= 0
  double weight_decay = 1e-2;  // decoupled: p ← p · (1 − lr · weight_decay) each step; >= 0

  AdamWOptions with_lr(double value) const { auto out = *this; out.lr = value; return out; }
  AdamWOptions with_betas(double b1, double b2) const { auto out = *this; out.beta1 = b1; out.beta2 = b2; return out; }
  AdamWOptions with_eps(double value) const { auto out = *this; out.eps = value; return out; }
  AdamWOptions with_weight_decay(double value) const { auto out = *this; out.weight_decay = value; return out; }
};

template <class T = float>
class AdamW final : public OptimizerBase<T, AdamWOptions> {
  using Base = OptimizerBase<T, AdamWOptions>;

 public:
  using Group = typename Base::Group;

  /// One group holding `parameters` (e.g. model.named_parameters()).
  explicit AdamW(const nn::NamedTensors<T>& parameters, AdamWOptions options = {}) : Base("AdamW") {
    this->add_param_group(Group{parameters, options});
  }
  /// Several groups, each with its own options, e.g. {{decayed, options}, {biases_and_norms,
  /// options.with_weight_decay(0)}}.
  explicit AdamW(const std::vector<Group>& groups) : Base("AdamW") {
    for (const auto& group : groups) this->add_param_group(group);
  }

 protected:
  void validate_options(const AdamWOptions& options) const override {
    detail::check_non_negative("AdamW", "lr", options.lr);
    detail::check_unit_interval("AdamW", "beta1", options.beta1);
    detail::check_unit_interval("AdamW", "beta2", options.beta2);
    detail::check_non_negative("AdamW", "eps", options.eps);
    detail::check_non_negative("AdamW", "weight_decay", options.weight_decay);
  }
  std::vector<std::string> buffer_names(const AdamWOptions&) const override { return {"exp_avg", "exp_avg_sq"}; }
  bool counts_steps() const override { return true; }

  void update(const Tensor<T>& parameter, const Tensor<T>& grad, typename Base::ParameterState& state,
              const AdamWOptions& options, bool /*first*/) override {
    const double t = static_cast<double>(state.step);
    const double bias_correction1 = 1.0 - std::pow(options.beta1, t);
    const double bias_correction2 = 1.0 - std::pow(options.beta2, t);
    const T decay = static_cast<T>(1.0 - options.lr * options.weight_decay);
    const T beta1 = static_cast<T>(options.beta1), one_minus_beta1 = static_cast<T>(1.0 - options.beta1);
    const T beta2 = static_cast<T>(options.beta2), one_minus_beta2 = static_cast<T>(1.0 - options.beta2);
    const T negative_step_size = static_cast<T>(-(options.lr / bias_correction1));
    const T bias_correction2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
    const T eps = static_cast<T>(options.eps);
    const bool decays = options.weight_decay != 0.0;

    T* p = parameter.data();
    const T* g = grad.data();
    T* m = state.buffers[0].data();
    T* v = state.buffers[1].data();
    // Elementwise: each element's update reads and writes only its own index, so the result does
    // not depend on how the range is split across threads.
    parallel_for(0, parameter.numel(), veil::detail::elementwise_grain / 4, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) {
        if (decays) p[i] *= decay;
        m[i] = m[i] * beta1 + one_minus_beta1 * g[i];
        v[i] = v[i] * beta2 + one_minus_beta2 * g[i] * g[i];
        const T denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
        p[i] = p[i] + negative_step_size * m[i] / denom;
      }
    });
  }
};

}  // namespace veil::optim

// SGD with momentum, dampening, Nesterov momentum and (coupled, L2) weight decay, computed as
// torch.optim.SGD (maximize = false). For each parameter p with gradient g:
//
//   d ← g + weight_decay · p                            (L2 penalty through the gradient)
//   b ← d                          at the first step    (momentum != 0; no dampening yet)
//   b ← momentum · b + (1 − dampening) · d   afterwards
//   d ← d + momentum · b   if nesterov, else d ← b      (Sutskever et al. 2013 formulation)
//   p ← p − lr · d
//
// State per parameter: "momentum_buffer" (b), only when momentum != 0; SGD keeps no step count.
#pragma once

#include "veil/optim/optimizer.hpp"

namespace veil::optim {

struct SGDOptions {
  double lr = 1e-3;            // learning rate; >= 0 (PyTorch >= 2.2's default)
  double momentum = 0.0;       // >= 0; 0 disables the momentum buffer
  double dampening = 0.0;      // >= 0; scales the new gradient into the buffer by (1 − dampening)
  double weight_decay = 0.0;   // >= 0; L2 penalty added to the gradient (not decoupled; see AdamW)
  bool nesterov = false;       // Nesterov momentum; needs momentum > 0 and dampening == 0

  SGDOptions with_lr(double value) const { auto out = *this; out.lr = value; return out; }
  SGDOptions with_momentum(double value) const { auto out = *this; out.momentum = value; return out; }
  SGDOptions with_dampening(double value) const { auto out = *this; out.dampening = value; return out; }
  SGDOptions with_weight_decay(double value) const { auto out = *this; out.weight_decay = value; return out; }
  SGDOptions with_nesterov(bool value) const { auto out = *this; out.nesterov = value; return out; }
};

template <class T = float>
class SGD final : public OptimizerBase<T, SGDOptions> {
  using Base = OptimizerBase<T, SGDOptions>;

 public:
  using Group = typename Base::Group;

  /// One group holding `parameters` (e.g. model.named_parameters()).
  explicit SGD(const nn::NamedTensors<T>& parameters, SGDOptions options = {}) : Base("SGD") {
    this->add_param_group(Group{parameters, options});
  }
  /// Several groups, each with its own options.
  explicit SGD(const std::vector<Group>& groups) : Base("SGD") {
    for (const auto& group : groups) this->add_param_group(group);
  }

 protected:
  void validate_options(const SGDOptions& options) const override {
    detail::check_non_negative("SGD", "lr", options.lr);
    detail::check_non_negative("SGD", "momentum", options.momentum);
    detail::check_non_negative("SGD", "dampening", options.dampening);
    detail::check_non_negative("SGD", "weight_decay", options.weight_decay);
    VEIL_CHECK(!options.nesterov || (options.momentum > 0.0 && options.dampening == 0.0), ValueError,
               "SGD: nesterov requires momentum > 0 and dampening == 0, got momentum = ", options.momentum,
               ", dampening = ", options.dampening);
  }
  std::vector<std::string> buffer_names(const SGDOptions& options) const override {
    if (options.momentum == 0.0) return {};
    return {"momentum_buffer"};
  }
  bool counts_steps() const override { return false; }

  void update(const Tensor<T>& parameter, const Tensor<T>& grad, typename Base::ParameterState& state,
              const SGDOptions& options, bool first) override {
    const T lr = static_cast<T>(options.lr);
    const T weight_decay = static_cast<T>(options.weight_decay);
    const T momentum = static_cast<T>(options.momentum);
    const T keep = static_cast<T>(1.0 - options.dampening);
    const bool decays = options.weight_decay != 0.0;
    const bool uses_momentum = options.momentum != 0.0;
    const bool nesterov = options.nesterov;

    T* p = parameter.data();
    const T* g = grad.data();
    T* b = uses_momentum ? state.buffers[0].data() : nullptr;
    // Elementwise: each element's update touches only its own index (thread-count independent).
    parallel_for(0, parameter.numel(), veil::detail::elementwise_grain / 4, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) {
        T d = g[i];
        if (decays) d = d + weight_decay * p[i];
        if (uses_momentum) {
          b[i] = first ? d : b[i] * momentum + keep * d;
          d = nesterov ? d + momentum * b[i] : b[i];
        }
        p[i] = p[i] + (-lr) * d;
      }
    });
  }
};

}  // namespace veil::optim

// Activation modules (no parameters): GELU (erf or tanh form) and ReLU.
#pragma once

#include "veil/nn/module.hpp"

namespace veil::nn {

struct GELUOptions {
  // none: x Φ(x) with the erf form (torch.nn.GELU()); tanh: GPT-2's approximation
  // (torch.nn.GELU(approximate="tanh")).
  GeluApproximation approximation = GeluApproximation::none;
};

template <class T = float>
class GELU : public Module<T> {
 public:
  explicit GELU(const GELUOptions& options = {}) : options_(options) {}
  Tensor<T> forward(const Tensor<T>& x) const { return gelu(x, options_.approximation); }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }
  const GELUOptions& options() const { return options_; }

 private:
  GELUOptions options_;
};

template <class T = float>
class ReLU : public Module<T> {
 public:
  Tensor<T> forward(const Tensor<T>& x) const { return relu(x); }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }
};

}  // namespace veil::nn

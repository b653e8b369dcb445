// nn::Dropout: inverted dropout in training mode, the identity in eval() (torch.nn.Dropout).
#pragma once

#include "veil/nn/module.hpp"

namespace veil::nn {

struct DropoutOptions {
  double p = 0.5;                  // probability of zeroing an element, in [0, 1) (torch's default 0.5)
  Generator* generator = nullptr;  // mask source; required when p > 0 and training. Must outlive the module.
};

template <class T = float>
class Dropout : public Module<T> {
 public:
  explicit Dropout(const DropoutOptions& options = {}) : options_(options) {
    VEIL_CHECK(options.p >= 0.0 && options.p < 1.0, ValueError, "Dropout: p must be in [0, 1), got ", options.p);
  }

  /// x in eval() or with p = 0 (the same tensor, no copy); otherwise each element zeroed with
  /// probability p and the rest scaled by 1/(1 - p), the mask drawn from options.generator.
  Tensor<T> forward(const Tensor<T>& x) const {
    if (!this->is_training() || options_.p == 0.0) return x;
    VEIL_CHECK(options_.generator != nullptr, ValueError, "Dropout: p = ", options_.p,
               " in training mode needs DropoutOptions.generator, got none (or call eval())");
    return dropout(x, options_.p, true, *options_.generator);
  }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  const DropoutOptions& options() const { return options_; }

 private:
  DropoutOptions options_;
};

}  // namespace veil::nn

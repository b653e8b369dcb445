// nn::Linear: y = x Wᵀ + b, with W [out_features, in_features] as in torch.nn.Linear, so state
// dicts map one to one. Also the functional form nn::linear and the parameter initialisers the
// other modules share.
#pragma once

#include <cmath>
#include <optional>

#include "veil/nn/module.hpp"

namespace veil::nn {

namespace detail {

/// The generator a constructor draws its initial values from: the caller's when given, otherwise
/// `fallback` (a Generator(0) owned by the constructor). Without one, every module built the same
/// way starts with the same values; pass a generator to get different ones.
inline Generator& init_generator(Generator* given, Generator& fallback) { return given ? *given : fallback; }

/// Uniform in [-bound, bound): torch's kaiming_uniform_(a = √5) (bound 1/√fan_in) and
/// xavier_uniform_ (bound √(6 / (fan_in + fan_out))) are both of this form.
template <class T>
Tensor<T> uniform_init(const Shape& shape, double bound, Generator& generator) {
  return rand<T>(shape, generator, static_cast<T>(-bound), static_cast<T>(bound));
}

/// xavier_uniform_ for a [fan_out, fan_in] weight, as torch.nn.init computes the fans.
template <class T>
Tensor<T> xavier_uniform(Index fan_out, Index fan_in, Generator& generator) {
  return uniform_init<T>({fan_out, fan_in}, std::sqrt(6.0 / static_cast<double>(fan_in + fan_out)), generator);
}

}  // namespace detail

/// x Wᵀ + b. x: [..., in]; weight: [out, in]; bias: [out] or undefined  ->  [..., out].
/// One GEMM: the leading dimensions of a contiguous x fold into rows, and Wᵀ is a transposed view.
template <class T>
Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias = Tensor<T>()) {
  VEIL_CHECK(x.defined() && weight.defined(), ValueError, "linear: x and weight must be defined tensors");
  VEIL_CHECK(weight.dim() == 2, ShapeError, "linear: weight must be [out_features, in_features], got shape ",
             to_string(weight.shape()));
  VEIL_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), ShapeError, "linear: input x must be [..., ",
             weight.size(1), "] (in_features = ", weight.size(1), "), got shape ", to_string(x.shape()));
  Tensor<T> y = matmul(x, transpose(weight, 0, 1));
  if (!bias.defined()) return y;
  VEIL_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), ShapeError, "linear: bias must be [",
             weight.size(0), "] (out_features), got shape ", to_string(bias.shape()));
  return y + bias;
}

struct LinearOptions {
  Index in_features = 0;           // width of the input's last dimension
  Index out_features = 0;          // width of the output's last dimension
  bool bias = true;                // learnable bias of [out_features]
  Generator* generator = nullptr;  // initial values; nullptr: a Generator(0) of the constructor's own
};

/// torch.nn.Linear. Parameters "weight" [out, in] and, with options.bias, "bias" [out], both
/// initialised uniform in ±1/√in_features (torch's default init).
template <class T = float>
class Linear : public Module<T> {
 public:
  explicit Linear(const LinearOptions& options) : Linear(options, options.generator) {}
  Linear(const LinearOptions& options, Generator& generator) : Linear(options, &generator) {}

  Tensor<T> forward(const Tensor<T>& x) const { return linear(x, weight, bias); }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  const LinearOptions& options() const { return options_; }

  Tensor<T> weight;  // [out_features, in_features]
  Tensor<T> bias;    // [out_features], undefined without options.bias

 private:
  Linear(const LinearOptions& options, Generator* given) : options_(options) {
    VEIL_CHECK(options.in_features > 0, ValueError, "Linear: in_features must be > 0, got ", options.in_features);
    VEIL_CHECK(options.out_features > 0, ValueError, "Linear: out_features must be > 0, got ", options.out_features);
    options_.generator = nullptr;  // not kept: only the constructor draws from it
    Generator fallback(0);
    Generator& generator = detail::init_generator(given, fallback);
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features));
    weight = this->register_parameter(
        "weight", detail::uniform_init<T>({options.out_features, options.in_features}, bound, generator));
    if (options.bias)
      bias = this->register_parameter("bias", detail::uniform_init<T>({options.out_features}, bound, generator));
  }

  LinearOptions options_;
};

}  // namespace veil::nn

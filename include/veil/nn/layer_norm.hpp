// nn::LayerNorm: normalises over the trailing normalized_shape dimensions, then scales by
// "weight" (ones) and adds "bias" (zeros), as torch.nn.LayerNorm (bias = false as in torch >= 2.1).
#pragma once

#include "veil/nn/module.hpp"

namespace veil::nn {

struct LayerNormOptions {
  Shape normalized_shape;          // trailing extents normalised over, e.g. {E}
  double eps = 1e-5;               // added to the variance (torch's default)
  bool elementwise_affine = true;  // learnable weight (and bias unless `bias` is false)
  bool bias = true;                // learnable bias; off in GPT-style models with bias = False
};

template <class T = float>
class LayerNorm : public Module<T> {
 public:
  explicit LayerNorm(const LayerNormOptions& options) : options_(options) {
    VEIL_CHECK(!options.normalized_shape.empty(), ValueError,
               "LayerNorm: normalized_shape must hold at least one extent, got []");
    for (Index extent : options.normalized_shape)
      VEIL_CHECK(extent > 0, ValueError, "LayerNorm: normalized_shape extents must be > 0, got ",
                 to_string(options.normalized_shape));
    if (options.elementwise_affine) {
      weight = this->register_parameter("weight", ones<T>(options.normalized_shape));
      if (options.bias) bias = this->register_parameter("bias", zeros<T>(options.normalized_shape));
    }
  }

  /// x: [..., *normalized_shape]  ->  same shape (veil::layer_norm checks the trailing extents).
  Tensor<T> forward(const Tensor<T>& x) const {
    return layer_norm(x, options_.normalized_shape, weight, bias, options_.eps);
  }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  const LayerNormOptions& options() const { return options_; }

  Tensor<T> weight;  // normalized_shape; undefined without elementwise_affine
  Tensor<T> bias;    // normalized_shape; undefined without elementwise_affine or bias

 private:
  LayerNormOptions options_;
};

}  // namespace veil::nn

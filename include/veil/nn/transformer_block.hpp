// nn::TransformerBlock: the pre-LayerNorm block of GPT-2 / nanoGPT:
//
//   h = x + dropout(attn(ln1(x), mask))
//   y = h + mlp(ln2(h)),   mlp = Linear(E, 4E) -> GELU -> Linear(4E, E) -> Dropout
//
// x: [B, L, E] -> [B, L, E]. The mask decides the role: mask::key_padding(lengths) for an
// encoder over padded batches, mask::causal() for a decoder, mask::documents(lengths) &
// mask::causal() for packed language-model training (each document attends only to itself).
// Decoding step by step passes a KVCache to forward.
//
// State dict names (torch.nn.Sequential numbering inside mlp):
//   ln1.weight, ln1.bias, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
//   attn.out_proj.bias, ln2.weight, ln2.bias, mlp.0.weight, mlp.0.bias, mlp.2.weight, mlp.2.bias
// (with num_kv_heads < num_heads, attn.q_proj_weight / k_proj_weight / v_proj_weight replace
// attn.in_proj_weight; with bias = false every *.bias entry is absent).
#pragma once

#include <memory>
#include <optional>

#include "veil/nn/activation.hpp"
#include "veil/nn/dropout.hpp"
#include "veil/nn/layer_norm.hpp"
#include "veil/nn/linear.hpp"
#include "veil/nn/multi_head_attention.hpp"
#include "veil/nn/sequential.hpp"

namespace veil::nn {

struct TransformerBlockOptions {
  Index embed_dim = 0;                // E
  Index num_heads = 1;                // H; E % H == 0
  std::optional<Index> num_kv_heads = std::nullopt;  // Hkv (grouped-query attention); default H
  std::optional<Index> hidden_dim = std::nullopt;  // width of the MLP's hidden layer; default 4E
  bool bias = true;                   // biases of every Linear, of the attention and of both LayerNorms
  double dropout = 0.0;               // on each residual branch (after out_proj and after the MLP)
  double attention_dropout = 0.0;     // on the attention probabilities
  GeluApproximation gelu = GeluApproximation::none;  // tanh: GPT-2's "new GELU"
  double layer_norm_eps = 1e-5;
  // Draws the initial weights and the dropout masks. nullptr: weights from a Generator(0) of the
  // constructor's own, and no dropout in training. Must outlive the block when dropout is used.
  Generator* generator = nullptr;
};

template <class T = float>
class TransformerBlock : public Module<T> {
 public:
  explicit TransformerBlock(const TransformerBlockOptions& options) : options_(options) {
    VEIL_CHECK(options.embed_dim > 0, ValueError, "TransformerBlock: embed_dim must be > 0, got ", options.embed_dim);
    const Index E = options.embed_dim, hidden = options.hidden_dim.value_or(4 * options.embed_dim);
    VEIL_CHECK(hidden > 0, ValueError, "TransformerBlock: hidden_dim must be > 0, got ", hidden);
    Generator fallback(0);
    Generator& generator = detail::init_generator(options.generator, fallback);
    const LayerNormOptions norm{.normalized_shape = {E}, .eps = options.layer_norm_eps, .bias = options.bias};
    ln1 = this->register_module("ln1", std::make_shared<LayerNorm<T>>(norm));
    attn = this->register_module(
        "attn", std::make_shared<MultiHeadAttention<T>>(MultiHeadAttentionOptions{.embed_dim = E,
                                                                                  .num_heads = options.num_heads,
                                                                                  .num_kv_heads = options.num_kv_heads,
                                                                                  .bias = options.bias,
                                                                                  .dropout = options.attention_dropout,
                                                                                  .generator = options.generator},
                                                                        generator));
    ln2 = this->register_module("ln2", std::make_shared<LayerNorm<T>>(norm));
    mlp = this->register_module("mlp", std::make_shared<Sequential<T>>());
    mlp->push_back(std::make_shared<Linear<T>>(LinearOptions{.in_features = E, .out_features = hidden, .bias = options.bias},
                                               generator));
    mlp->push_back(std::make_shared<GELU<T>>(GELUOptions{.approximation = options.gelu}));
    mlp->push_back(std::make_shared<Linear<T>>(LinearOptions{.in_features = hidden, .out_features = E, .bias = options.bias},
                                               generator));
    mlp->push_back(std::make_shared<Dropout<T>>(DropoutOptions{.p = options.dropout, .generator = options.generator}));
    residual_dropout = this->register_module(
        "residual_dropout", std::make_shared<Dropout<T>>(DropoutOptions{.p = options.dropout, .generator = options.generator}));
  }

  /// x: [B, L, E] -> [B, L, E]; with a cache, x holds only the new positions (see
  /// MultiHeadAttention::forward).
  Tensor<T> forward(const Tensor<T>& x, const mask::Mask& mask = mask::none(), KVCache<T>* cache = nullptr) const {
    VEIL_CHECK(x.defined() && x.dim() == 3 && x.size(2) == options_.embed_dim, ShapeError,
               "TransformerBlock: x must be [B, L, ", options_.embed_dim, "] (embed_dim = ", options_.embed_dim,
               "), got ", x.defined() ? to_string(x.shape()) : std::string("an undefined tensor"));
    const Tensor<T> h = x + residual_dropout->forward(attn->forward(ln1->forward(x), mask, cache));
    return h + mlp->forward(ln2->forward(h));
  }
  Tensor<T> operator()(const Tensor<T>& x, const mask::Mask& mask = mask::none(), KVCache<T>* cache = nullptr) const {
    return forward(x, mask, cache);
  }

  const TransformerBlockOptions& options() const { return options_; }

  std::shared_ptr<LayerNorm<T>> ln1, ln2;
  std::shared_ptr<MultiHeadAttention<T>> attn;
  std::shared_ptr<Sequential<T>> mlp;  // 0: Linear(E, hidden), 1: GELU, 2: Linear(hidden, E), 3: Dropout
  std::shared_ptr<Dropout<T>> residual_dropout;  // after attn (no parameters)

 private:
  TransformerBlockOptions options_;
};

}  // namespace veil::nn

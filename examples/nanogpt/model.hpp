// nanoGPT's GPT (Karpathy, nanoGPT model.py) on veil: token + position embeddings, pre-LayerNorm
// blocks of causal self-attention and a GELU MLP of width 4·E, a final LayerNorm and an LM head
// tied to the token embedding. Parameter names and shapes are nanoGPT's, so its state_dict saved
// as safetensors (without the "*.attn.bias" causal-mask buffers: veil needs none) loads as is.
//
// Glossary: B batch, T sequence length (<= block_size), E n_embd, H n_head, D = E / H, V vocab.
#pragma once

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <veil/veil.hpp>

namespace nanogpt {

using veil::Index;
using veil::Tensor;
namespace nn = veil::nn;

struct GptConfig {
  Index vocab_size = 0;
  Index block_size = 64;  // longest context
  Index n_layer = 4;
  Index n_head = 4;
  Index n_embd = 128;
  double dropout = 0.0;
  bool bias = true;       // biases in Linear and LayerNorm layers, as nanoGPT's `bias`
};

/// Keys and values of the tokens seen so far, per layer: [B, H, T_cached, D].
struct KvCache {
  std::vector<Tensor<float>> keys, values;
  Index length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  void clear() { keys.clear(), values.clear(); }
};

namespace detail {

inline void normal_init(Tensor<float>& parameter, double stddev, veil::Generator& generator) {
  const Tensor<float> values = veil::randn<float>(parameter.shape(), generator, 0.0f, static_cast<float>(stddev));
  veil::detail::copy_into(parameter.detach(), values);
}

inline void zero_init(Tensor<float>& parameter) {
  if (parameter.defined()) veil::detail::copy_into(parameter.detach(), veil::zeros<float>(parameter.shape()));
}

}  // namespace detail

/// Multi-head causal self-attention with nanoGPT's packed projection c_attn [3E, E] and c_proj.
class CausalSelfAttention : public nn::Module<float> {
 public:
  CausalSelfAttention(const GptConfig& config, veil::Generator* dropout_generator)
      : config_(config), dropout_generator_(dropout_generator) {
    c_attn = register_module("c_attn", std::make_shared<nn::Linear<float>>(
                                           nn::LinearOptions{config.n_embd, 3 * config.n_embd, config.bias}));
    c_proj = register_module("c_proj", std::make_shared<nn::Linear<float>>(
                                           nn::LinearOptions{config.n_embd, config.n_embd, config.bias}));
  }

  /// x: [B, T, E] -> [B, T, E]. With a cache, x holds only the new tokens; their keys and values
  /// are appended and the mask (bottom-right aligned) lets them see every cached token.
  Tensor<float> forward(const Tensor<float>& x, const veil::mask::Mask& mask, Tensor<float>* cached_key = nullptr,
                        Tensor<float>* cached_value = nullptr) const {
    const Index B = x.size(0), T = x.size(1), E = config_.n_embd, H = config_.n_head, D = E / H;
    const Tensor<float> qkv = c_attn->forward(x);  // [B, T, 3E]
    const auto heads = [&](Index part) {              // [B, T, E] slice -> [B, H, T, D] view
      return veil::permute(veil::reshape(veil::slice(qkv, 2, part * E, (part + 1) * E), {B, T, H, D}), {0, 2, 1, 3});
    };
    Tensor<float> q = heads(0), k = heads(1), v = heads(2);
    if (cached_key != nullptr) {
      if (cached_key->defined()) k = veil::cat<float>({*cached_key, k}, 2), v = veil::cat<float>({*cached_value, v}, 2);
      *cached_key = k.detach(), *cached_value = v.detach();
    }
    veil::attention::AttentionOptions options;
    if (is_training() && config_.dropout > 0) options.dropout = config_.dropout, options.generator = dropout_generator_;
    const Tensor<float> y = veil::scaled_dot_product_attention(q, k, v, mask, options);  // [B, H, T, D]
    return residual_dropout(c_proj->forward(veil::reshape(veil::permute(y, {0, 2, 1, 3}), {B, T, E})));
  }

  Tensor<float> residual_dropout(const Tensor<float>& x) const {
    if (!is_training() || config_.dropout == 0) return x;
    return veil::dropout(x, config_.dropout, true, *dropout_generator_);
  }

  std::shared_ptr<nn::Linear<float>> c_attn, c_proj;

 private:
  GptConfig config_;
  veil::Generator* dropout_generator_;
};

class Mlp : public nn::Module<float> {
 public:
  Mlp(const GptConfig& config, veil::Generator* dropout_generator)
      : config_(config), dropout_generator_(dropout_generator) {
    c_fc = register_module("c_fc", std::make_shared<nn::Linear<float>>(
                                       nn::LinearOptions{config.n_embd, 4 * config.n_embd, config.bias}));
    c_proj = register_module("c_proj", std::make_shared<nn::Linear<float>>(
                                           nn::LinearOptions{4 * config.n_embd, config.n_embd, config.bias}));
  }
  /// nanoGPT's nn.GELU() is the exact (erf) form.
  Tensor<float> forward(const Tensor<float>& x) const {
    Tensor<float> y = c_proj->forward(veil::gelu(c_fc->forward(x)));
    if (!is_training() || config_.dropout == 0) return y;
    return veil::dropout(y, config_.dropout, true, *dropout_generator_);
  }

  std::shared_ptr<nn::Linear<float>> c_fc, c_proj;

 private:
  GptConfig config_;
  veil::Generator* dropout_generator_;
};

class Block : public nn::Module<float> {
 public:
  Block(const GptConfig& config, veil::Generator* dropout_generator) {
    const nn::LayerNormOptions norm{{config.n_embd}, 1e-5, true, config.bias};
    ln_1 = register_module("ln_1", std::make_shared<nn::LayerNorm<float>>(norm));
    attn = register_module("attn", std::make_shared<CausalSelfAttention>(config, dropout_generator));
    ln_2 = register_module("ln_2", std::make_shared<nn::LayerNorm<float>>(norm));
    mlp = register_module("mlp", std::make_shared<Mlp>(config, dropout_generator));
  }
  Tensor<float> forward(const Tensor<float>& x, const veil::mask::Mask& mask, Tensor<float>* cached_key = nullptr,
                        Tensor<float>* cached_value = nullptr) const {
    const Tensor<float> h = x + attn->forward(ln_1->forward(x), mask, cached_key, cached_value);
    return h + mlp->forward(ln_2->forward(h));
  }

  std::shared_ptr<nn::LayerNorm<float>> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<Mlp> mlp;
};

class Gpt : public nn::Module<float> {
 public:
  /// Weights drawn from `init` with nanoGPT's scheme: N(0, 0.02) for Linear and Embedding
  /// weights, zero biases, and N(0, 0.02/√(2·n_layer)) for the projections into the residual
  /// stream (GPT-2's scaling). `dropout_generator` must outlive the model when dropout > 0.
  Gpt(const GptConfig& config, veil::Generator& init, veil::Generator* dropout_generator = nullptr) : config_(config) {
    VEIL_CHECK(config.vocab_size > 0 && config.block_size > 0 && config.n_layer > 0 && config.n_head > 0, veil::ValueError,
               "Gpt: vocab_size, block_size, n_layer and n_head must be > 0");
    VEIL_CHECK(config.n_embd % config.n_head == 0, veil::ValueError, "Gpt: n_embd (", config.n_embd,
               ") must be divisible by n_head (", config.n_head, ")");
    VEIL_CHECK(config.dropout == 0 || dropout_generator != nullptr, veil::ValueError,
               "Gpt: dropout ", config.dropout, " > 0 needs a dropout generator");
    transformer = register_module("transformer", std::make_shared<nn::Module<float>>());
    wte = transformer->register_module(
        "wte", std::make_shared<nn::Embedding<float>>(nn::EmbeddingOptions{config.vocab_size, config.n_embd}));
    wpe = transformer->register_module(
        "wpe", std::make_shared<nn::Embedding<float>>(nn::EmbeddingOptions{config.block_size, config.n_embd}));
    auto layers = transformer->register_module("h", std::make_shared<nn::Module<float>>());
    for (Index layer = 0; layer < config.n_layer; ++layer)
      h.push_back(layers->register_module(std::to_string(layer), std::make_shared<Block>(config, dropout_generator)));
    ln_f = transformer->register_module(
        "ln_f", std::make_shared<nn::LayerNorm<float>>(nn::LayerNormOptions{{config.n_embd}, 1e-5, true, config.bias}));
    dropout_generator_ = dropout_generator;

    for (auto& [name, parameter] : named_parameters()) {
      const bool residual_projection = name.size() > 13 && name.compare(name.size() - 13, 13, "c_proj.weight") == 0;
      if (name.find("ln_") != std::string::npos) continue;  // LayerNorm: ones and zeros
      if (parameter.dim() == 1) detail::zero_init(parameter);
      else detail::normal_init(parameter, residual_projection ? 0.02 / std::sqrt(2.0 * config.n_layer) : 0.02, init);
    }
  }

  const GptConfig& config() const { return config_; }

  /// Logits [B, T, V] for token ids [B, T] at positions [B, T] (default 0..T-1) under `mask`
  /// (default causal). With a cache, ids are the new tokens only and positions continue it.
  Tensor<float> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions = {},
                        const veil::mask::Mask& mask = veil::mask::causal(), KvCache* cache = nullptr) const {
    VEIL_CHECK(ids.dim() == 2, veil::ShapeError, "Gpt: ids must be [B, T], got ", veil::to_string(ids.shape()));
    const Index B = ids.size(0), T = ids.size(1);
    const Index start = cache != nullptr ? cache->length() : 0;
    VEIL_CHECK(start + T <= config_.block_size, veil::ValueError, "Gpt: sequence length ", start + T,
               " exceeds block_size ", config_.block_size);
    Tensor<std::int64_t> where = positions;
    if (!where.defined()) {
      where = Tensor<std::int64_t>::empty({B, T});
      for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) where.data()[b * T + t] = start + t;
    }
    Tensor<float> x = wte->forward(ids) + wpe->forward(where);
    if (is_training() && config_.dropout > 0) x = veil::dropout(x, config_.dropout, true, *dropout_generator_);
    if (cache != nullptr && cache->keys.empty())
      cache->keys.resize(static_cast<std::size_t>(config_.n_layer)), cache->values.resize(cache->keys.size());
    for (std::size_t layer = 0; layer < h.size(); ++layer)
      x = h[layer]->forward(x, mask, cache ? &cache->keys[layer] : nullptr, cache ? &cache->values[layer] : nullptr);
    return nn::linear(ln_f->forward(x), wte->weight);  // LM head tied to the token embedding
  }

  /// Accepts nanoGPT's state dict: "lm_head.weight" (the tied embedding, saved twice by PyTorch)
  /// must equal transformer.wte.weight's shape and is otherwise ignored; "*.attn.bias" causal
  /// buffers are dropped.
  void load_checkpoint(nn::StateDict<float> dict) {
    if (auto head = dict.find("lm_head.weight"); head != dict.end()) {
      VEIL_CHECK(head->second.shape() == wte->weight.shape(), veil::IoError, "size mismatch for lm_head.weight: checkpoint ",
                 veil::to_string(head->second.shape()), " vs model ", veil::to_string(wte->weight.shape()));
      dict.erase(head);
    }
    for (auto it = dict.begin(); it != dict.end();) {
      const std::string& name = it->first;
      const bool mask_buffer = name.size() > 10 && name.compare(name.size() - 10, 10, ".attn.bias") == 0;
      it = mask_buffer ? dict.erase(it) : std::next(it);
    }
    load_state_dict(dict);
  }

  std::shared_ptr<nn::Module<float>> transformer;
  std::shared_ptr<nn::Embedding<float>> wte, wpe;
  std::vector<std::shared_ptr<Block>> h;
  std::shared_ptr<nn::LayerNorm<float>> ln_f;

 private:
  GptConfig config_;
  veil::Generator* dropout_generator_ = nullptr;
};

}  // namespace nanogpt

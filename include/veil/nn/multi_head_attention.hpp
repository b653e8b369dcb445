// nn::MultiHeadAttention: torch.nn.MultiheadAttention (batch_first = True) on top of the fused
// masked attention op, plus grouped-query heads, cross-attention widths and a KV cache.
//
//   nn::MultiHeadAttention mha(nn::MultiHeadAttentionOptions{.embed_dim = 512, .num_heads = 8});
//   auto y = mha(x, veil::mask::causal());                                   // x: [B, L, E]
//   auto z = mha(query, key, value, veil::mask::key_padding(lengths));       // cross-attention
//   auto [out, weights] = mha.forward_with_weights(query, key, value, mask); // weights [B, Lq, Lk]
//
// Glossary: B batch, Lq / Lk query / key lengths, E = embed_dim, H = num_heads, Hkv =
// num_kv_heads, D = E / H the head width. Every tensor is batch-first.
//
// Parameters (names and layouts of torch.nn.MultiheadAttention, so its state_dict loads one to one):
//   kdim = vdim = E and Hkv = H:  in_proj_weight [3E, E] (rows: q, then k, then v),
//                                 in_proj_bias [3E], out_proj.weight [E, E], out_proj.bias [E]
//   otherwise:                    q_proj_weight [E, E], k_proj_weight [Hkv·D, kdim],
//                                 v_proj_weight [Hkv·D, vdim], in_proj_bias [E + 2·Hkv·D],
//                                 out_proj.weight [E, E], out_proj.bias [E]
// (torch keeps the bias packed as in_proj_bias even when the weights are separate; with Hkv = H
// the sizes are exactly torch's.) Without options.bias there is no in_proj_bias and no
// out_proj.bias. Initial values follow torch: xavier-uniform projection weights, zero biases,
// out_proj.weight uniform in ±1/√E.
//
// Masks: any veil::mask, passed unchanged to scaled_dot_product_attention over [B, H, Lq, Lk].
// torch's conventions translate as: bool attn_mask / key_padding_mask (true = NOT allowed) ->
// mask::forbid(m) (key_padding_mask reshaped to [B, 1, 1, Lk]); float attn_mask -> mask::additive(m);
// is_causal -> mask::causal(). Rows with no kept key give 0 (torch gives NaN).
//
// Not provided: torch's add_bias_kv, add_zero_attn and unbatched [L, E] inputs.
#pragma once

#include <limits>
#include <optional>
#include <utility>

#include "veil/attention/fused_kernel.hpp"
#include "veil/attention/mask.hpp"
#include "veil/attention/options.hpp"
#include "veil/attention/reference_attention.hpp"
#include "veil/attention/scaled_dot_product.hpp"
#include "veil/nn/linear.hpp"

namespace veil::nn {

struct MultiHeadAttentionOptions {
  Index embed_dim = 0;                // E: width of the query and of the output
  Index num_heads = 1;                // H: E % H == 0; head width D = E / H
  std::optional<Index> num_kv_heads = std::nullopt;  // Hkv (grouped-query attention): H % Hkv == 0; default H
  std::optional<Index> kdim = std::nullopt;  // width of the key input (cross-attention); default E
  std::optional<Index> vdim = std::nullopt;  // width of the value input (cross-attention); default E
  bool bias = true;                   // in_proj_bias and out_proj.bias
  double dropout = 0.0;               // probability of zeroing an attention weight, training mode only
  // Draws the initial weights and, when dropout > 0 in training mode, one dropout seed per forward.
  // nullptr: weights from a Generator(0) of the constructor's own; then dropout > 0 cannot train.
  // Must outlive the module when dropout > 0.
  Generator* generator = nullptr;
};

/// What forward_with_weights returns as weights.
enum class AttentionWeights {
  average_over_heads,  // [B, Lq, Lk]: torch's average_attn_weights = True (its default)
  per_head             // [B, H, Lq, Lk]: torch's average_attn_weights = False
};

template <class T>
struct AttentionOutput {
  Tensor<T> output;   // [B, Lq, E]
  Tensor<T> weights;  // attention probabilities (after dropout, as torch returns them)
};

/// Keys and values of the positions decoded so far, for one attention layer, in the layout the
/// fused op reads: [B, Hkv, length, D]. Storage grows by doubling, so appending a step copies
/// only the new rows (amortised) and keys()/values() are views, never copies.
///
/// The cache holds detached values: it is an inference device. A cached forward is differentiable
/// with respect to the step's own query, keys and values, not the earlier steps'.
template <class T = float>
class KVCache {
 public:
  /// Positions held.
  Index length() const { return length_; }
  bool empty() const { return length_ == 0; }
  /// Forgets every position (the next append may have any batch size or head count).
  void clear() {
    keys_ = values_ = Tensor<T>();
    length_ = 0;
  }

  /// [B, Hkv, length, D] and [B, Hkv, length, Dv]: views of the cache (undefined when empty).
  Tensor<T> keys() const { return prefix(keys_, length_); }
  Tensor<T> values() const { return prefix(values_, length_); }

  /// Appends key [B, Hkv, n, D] and value [B, Hkv, n, Dv] (copies of their values).
  void append(const Tensor<T>& key, const Tensor<T>& value) {
    VEIL_CHECK(key.dim() == 4 && value.dim() == 4 && key.size(0) == value.size(0) && key.size(1) == value.size(1) &&
                   key.size(2) == value.size(2),
               ShapeError, "KVCache::append: key must be [B, Hkv, n, D] and value [B, Hkv, n, Dv], got key ",
               to_string(key.shape()), " and value ", to_string(value.shape()));
    if (keys_.defined()) {
      VEIL_CHECK(key.size(0) == keys_.size(0) && key.size(1) == keys_.size(1) && key.size(3) == keys_.size(3) &&
                     value.size(3) == values_.size(3),
                 ShapeError, "KVCache::append: the cache holds keys [", keys_.size(0), ", ", keys_.size(1), ", ",
                 length_, ", ", keys_.size(3), "] and values of width ", values_.size(3), "; got key ",
                 to_string(key.shape()), " and value ", to_string(value.shape()), " (clear() to start over)");
    }
    const Index added = key.size(2), needed = length_ + added;
    if (!keys_.defined() || needed > keys_.size(2)) {
      const Index capacity = std::max<Index>({needed, 2 * (keys_.defined() ? keys_.size(2) : 0), 16});
      keys_ = grown(keys_, key, capacity);
      values_ = grown(values_, value, capacity);
    }
    NoGradGuard no_grad;
    veil::detail::copy_into(slice(keys_, 2, length_, needed), key.detach());
    veil::detail::copy_into(slice(values_, 2, length_, needed), value.detach());
    length_ = needed;
  }

 private:
  static Tensor<T> prefix(const Tensor<T>& buffer, Index length) {
    if (!buffer.defined()) return Tensor<T>();
    return Tensor<T>::view_of(buffer, {buffer.size(0), buffer.size(1), length, buffer.size(3)}, buffer.strides(),
                              buffer.offset());
  }
  Tensor<T> grown(const Tensor<T>& old, const Tensor<T>& like, Index capacity) const {
    Tensor<T> buffer = Tensor<T>::empty({like.size(0), like.size(1), capacity, like.size(3)});
    if (old.defined() && length_ > 0) {
      NoGradGuard no_grad;
      veil::detail::copy_into(slice(buffer, 2, 0, length_), prefix(old, length_));
    }
    return buffer;
  }

  Tensor<T> keys_, values_;  // [B, Hkv, capacity, D], [B, Hkv, capacity, Dv]
  Index length_ = 0;
};

namespace detail {

/// Element `index` of dimension 0, as a view: x[index].
template <class T>
Tensor<T> select_first(const Tensor<T>& x, Index index) {
  return squeeze(narrow(x, 0, index, 1), 0);
}

/// [B, L, n·D] (contiguous) -> [B, n, L, D]: a reshape (view) and a permute (view).
template <class T>
Tensor<T> split_heads(const Tensor<T>& x, Index heads) {
  return permute(reshape(x, {x.size(0), x.size(1), heads, x.size(2) / heads}), {0, 2, 1, 3});
}

/// Attention with its probabilities materialised, through the reference path (the same
/// semantics as the fused op; O(B·H·Lq·Lk) memory: only for need-weights calls). Dropout uses the
/// fused kernel's per-edge keep test, so a seed means the same mask in both.
template <class T>
std::pair<Tensor<T>, Tensor<T>> attention_with_probabilities(const Tensor<T>& q, const Tensor<T>& k,
                                                             const Tensor<T>& v, const mask::Mask& mask,
                                                             const attention::AttentionOptions& options) {
  auto result = attention::reference_attention(q, k, v, mask, options);
  return {result.output, result.probabilities};
}

}  // namespace detail

template <class T = float>
class MultiHeadAttention : public Module<T> {
 public:
  explicit MultiHeadAttention(const MultiHeadAttentionOptions& options) : MultiHeadAttention(options, options.generator) {}
  /// Initial weights from `generator`; options.generator still supplies the dropout seeds.
  MultiHeadAttention(const MultiHeadAttentionOptions& options, Generator& generator)
      : MultiHeadAttention(options, &generator) {}

 private:
  MultiHeadAttention(const MultiHeadAttentionOptions& options, Generator* init)
      : options_(options),
        embed_dim_(options.embed_dim),
        heads_(options.num_heads),
        kv_heads_(options.num_kv_heads.value_or(options.num_heads)),
        kdim_(options.kdim.value_or(options.embed_dim)),
        vdim_(options.vdim.value_or(options.embed_dim)) {
    VEIL_CHECK(embed_dim_ > 0, ValueError, "MultiHeadAttention: embed_dim must be > 0, got ", embed_dim_);
    VEIL_CHECK(heads_ > 0, ValueError, "MultiHeadAttention: num_heads must be > 0, got ", heads_);
    VEIL_CHECK(embed_dim_ % heads_ == 0, ValueError, "MultiHeadAttention: embed_dim (", embed_dim_,
               ") must be divisible by num_heads (", heads_, "), got remainder ", embed_dim_ % heads_);
    VEIL_CHECK(kv_heads_ > 0 && heads_ % kv_heads_ == 0, ValueError, "MultiHeadAttention: num_heads (", heads_,
               ") must be a multiple of num_kv_heads (", kv_heads_, ") for grouped-query attention");
    VEIL_CHECK(kdim_ > 0 && vdim_ > 0, ValueError, "MultiHeadAttention: kdim and vdim must be > 0, got kdim = ", kdim_,
               ", vdim = ", vdim_);
    VEIL_CHECK(options.dropout >= 0.0 && options.dropout < 1.0, ValueError,
               "MultiHeadAttention: dropout must be in [0, 1), got ", options.dropout);
    head_dim_ = embed_dim_ / heads_;
    packed_ = kdim_ == embed_dim_ && vdim_ == embed_dim_ && kv_heads_ == heads_;

    Generator fallback(0);
    Generator& generator = detail::init_generator(init, fallback);
    const Index E = embed_dim_, kv_width = kv_heads_ * head_dim_;
    if (packed_) {
      in_proj_weight = this->register_parameter("in_proj_weight", detail::xavier_uniform<T>(3 * E, E, generator));
    } else {
      q_proj_weight = this->register_parameter("q_proj_weight", detail::xavier_uniform<T>(E, E, generator));
      k_proj_weight = this->register_parameter("k_proj_weight", detail::xavier_uniform<T>(kv_width, kdim_, generator));
      v_proj_weight = this->register_parameter("v_proj_weight", detail::xavier_uniform<T>(kv_width, vdim_, generator));
    }
    if (options.bias) in_proj_bias = this->register_parameter("in_proj_bias", zeros<T>({E + 2 * kv_width}));
    out_proj = this->register_module(
        "out_proj", std::make_shared<Linear<T>>(LinearOptions{.in_features = E, .out_features = E, .bias = options.bias},
                                                generator));
    if (options.bias) {
      NoGradGuard no_grad;
      veil::detail::copy_into(out_proj->bias.detach(), zeros<T>({E}));
    }
  }

 public:
  /// Self-attention. x: [B, L, E] -> [B, L, E]; one GEMM projects q, k and v (packed layout).
  /// With a cache, x holds the new positions only: their keys and values are appended to the
  /// cache and the queries attend over every cached position, the mask seeing [B, H, L, length]
  /// (mask::causal() is bottom-right aligned, so one-token steps match the full causal forward).
  Tensor<T> forward(const Tensor<T>& x, const mask::Mask& mask = mask::none(), KVCache<T>* cache = nullptr) const {
    check_input("x", x, "L", embed_dim_, "embed_dim");
    auto [q, k, v] = project_self(x);
    if (cache) {
      const Index previous = cache->length();
      cache->append(k, v);
      if (is_grad_enabled() && (k.requires_grad() || v.requires_grad())) {
        // Differentiable in this step's keys and values; the earlier ones are cached constants.
        if (previous > 0) {
          k = cat<T>({slice(cache->keys(), 2, 0, previous), k}, 2);
          v = cat<T>({slice(cache->values(), 2, 0, previous), v}, 2);
        }
      } else {
        k = cache->keys();
        v = cache->values();
      }
    }
    return merge_heads(attend(q, k, v, mask));
  }

  /// Attention of `query` over `key`/`value`. query: [B, Lq, E], key: [B, Lk, kdim],
  /// value: [B, Lk, vdim] -> [B, Lq, E]. Three GEMMs (slices of in_proj_weight when packed);
  /// gradients reach query, key and value separately even when they are the same tensor.
  Tensor<T> forward(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                    const mask::Mask& mask = mask::none()) const {
    auto [q, k, v] = project(query, key, value);
    return merge_heads(attend(q, k, v, mask));
  }

  Tensor<T> operator()(const Tensor<T>& x, const mask::Mask& mask = mask::none(), KVCache<T>* cache = nullptr) const {
    return forward(x, mask, cache);
  }
  Tensor<T> operator()(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                       const mask::Mask& mask = mask::none()) const {
    return forward(query, key, value, mask);
  }

  /// torch's need_weights = True: the output together with the attention probabilities,
  /// [B, Lq, Lk] averaged over heads or [B, H, Lq, Lk]. Runs the materialised path
  /// (detail::attention_with_probabilities: O(B·H·Lq·Lk) memory, output computed from the same
  /// probabilities, both differentiable); plain forward never builds them.
  AttentionOutput<T> forward_with_weights(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                                          const mask::Mask& mask = mask::none(),
                                          AttentionWeights weights = AttentionWeights::average_over_heads) const {
    auto [q, k, v] = project(query, key, value);
    auto [out, probabilities] = detail::attention_with_probabilities(q, k, v, mask, attention_options());
    if (weights == AttentionWeights::average_over_heads) probabilities = mean(probabilities, {1});
    return {merge_heads(out), probabilities};
  }
  AttentionOutput<T> forward_with_weights(const Tensor<T>& x, const mask::Mask& mask = mask::none(),
                                          AttentionWeights weights = AttentionWeights::average_over_heads) const {
    return forward_with_weights(x, x, x, mask, weights);
  }

  const MultiHeadAttentionOptions& options() const { return options_; }
  Index embed_dim() const { return embed_dim_; }
  Index num_heads() const { return heads_; }
  Index num_kv_heads() const { return kv_heads_; }
  Index head_dim() const { return head_dim_; }
  /// True when the projections are the packed in_proj_weight [3E, E] (kdim = vdim = E, Hkv = H).
  bool packed() const { return packed_; }

  Tensor<T> in_proj_weight;                               // [3E, E] when packed(), else undefined
  Tensor<T> q_proj_weight, k_proj_weight, v_proj_weight;  // when !packed(), else undefined
  Tensor<T> in_proj_bias;                                 // [E + 2·Hkv·D] with options.bias
  std::shared_ptr<Linear<T>> out_proj;                    // E -> E

 private:
  struct Heads {
    Tensor<T> q, k, v;  // [B, H, Lq, D], [B, Hkv, Lk, D], [B, Hkv, Lk, D]
  };

  void check_input(const char* name, const Tensor<T>& x, const char* length, Index width, const char* width_name) const {
    VEIL_CHECK(x.defined(), ValueError, "MultiHeadAttention: ", name, " must be a defined tensor");
    VEIL_CHECK(x.dim() == 3 && x.size(2) == width, ShapeError, "MultiHeadAttention: ", name, " must be [B, ", length,
               ", ", width, "] (", width_name, " = ", width, ", batch first), got shape ", to_string(x.shape()));
  }

  /// Row block [first, first + count) of the packed projection (weight) or bias.
  Tensor<T> rows(const Tensor<T>& packed, Index first, Index count) const {
    return packed.defined() ? narrow(packed, 0, first, count) : Tensor<T>();
  }

  Heads project_self(const Tensor<T>& x) const {
    if (!packed_) return project(x, x, x);
    // One GEMM for q, k and v: [B, L, 3E] -> [B, L, 3, H, D] -> [3, B, H, L, D], all views.
    const Tensor<T> qkv = linear(x, in_proj_weight, in_proj_bias);
    const Tensor<T> split = permute(reshape(qkv, {x.size(0), x.size(1), 3, heads_, head_dim_}), {2, 0, 3, 1, 4});
    return {detail::select_first(split, 0), detail::select_first(split, 1), detail::select_first(split, 2)};
  }

  Heads project(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value) const {
    check_input("query", query, "Lq", embed_dim_, "embed_dim");
    check_input("key", key, "Lk", kdim_, "kdim");
    check_input("value", value, "Lk", vdim_, "vdim");
    VEIL_CHECK(key.size(0) == query.size(0) && value.size(0) == query.size(0), ShapeError,
               "MultiHeadAttention: query, key and value must have the same batch size B, got query ",
               to_string(query.shape()), ", key ", to_string(key.shape()), ", value ", to_string(value.shape()));
    VEIL_CHECK(key.size(1) == value.size(1), ShapeError,
               "MultiHeadAttention: key and value must have the same length Lk, got key ", to_string(key.shape()),
               " and value ", to_string(value.shape()));
    const Index E = embed_dim_, kv_width = kv_heads_ * head_dim_;
    const Tensor<T> q_weight = packed_ ? rows(in_proj_weight, 0, E) : q_proj_weight;
    const Tensor<T> k_weight = packed_ ? rows(in_proj_weight, E, E) : k_proj_weight;
    const Tensor<T> v_weight = packed_ ? rows(in_proj_weight, 2 * E, E) : v_proj_weight;
    return {detail::split_heads(linear(query, q_weight, rows(in_proj_bias, 0, E)), heads_),
            detail::split_heads(linear(key, k_weight, rows(in_proj_bias, E, kv_width)), kv_heads_),
            detail::split_heads(linear(value, v_weight, rows(in_proj_bias, E + kv_width, kv_width)), kv_heads_)};
  }

  attention::AttentionOptions attention_options() const {
    const double p = this->is_training() ? options_.dropout : 0.0;
    VEIL_CHECK(p == 0.0 || options_.generator != nullptr, ValueError, "MultiHeadAttention: dropout ", p,
               " in training mode needs MultiHeadAttentionOptions.generator, got none (or call eval())");
    attention::AttentionOptions options;
    options.dropout = p;
    options.generator = options_.generator;
    return options;
  }

  Tensor<T> attend(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const mask::Mask& mask) const {
    return scaled_dot_product_attention(q, k, v, mask, attention_options());
  }

  /// [B, H, Lq, D] -> [B, Lq, H·D] (one copy) -> out_proj.
  Tensor<T> merge_heads(const Tensor<T>& heads) const {
    const Tensor<T> rows = permute(heads, {0, 2, 1, 3});
    return out_proj->forward(reshape(rows, {rows.size(0), rows.size(1), embed_dim_}));
  }

  MultiHeadAttentionOptions options_;
  Index embed_dim_, heads_, kv_heads_, kdim_, vdim_, head_dim_ = 0;
  bool packed_ = false;
};

}  // namespace veil::nn

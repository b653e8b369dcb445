// scaled_dot_product_attention: the fused masked attention op (forward, backward, public op).
//
// q: [B, H, Lq, D]  k: [B, Hkv, Lk, D]  v: [B, Hkv, Lk, Dv]  mask: a veil::mask::Mask
//   -> out: [B, H, Lq, Dv],  logsumexp: [B, H, Lq]
// out_i = Σ_j softmax_j(scale · q_i·k_j + bias_ij over kept j) v_j; rows with no kept key give 0.
// Never allocates an Lq×Lk buffer (except the gradient of an additive bias that requires grad,
// which has that size by definition).
#pragma once

#include <memory>
#include <sstream>

#include "veil/attention/fused_kernel.hpp"
#include "veil/attention/options.hpp"
#include "veil/ops.hpp"

namespace veil::attention {

template <class T>
struct AttentionResult {
  Tensor<T> output;     // [B, H, Lq, Dv]
  Tensor<T> logsumexp;  // [B, H, Lq]; -inf on fully masked rows; not differentiable
  Tensor<T> probabilities;  // [B, H, Lq, Lk] after dropout, differentiable; the reference path only
};

namespace detail {

/// Tile sizes: Q, K, V, S tiles of a work item stay within L2 (performance notes §3.2).
inline void choose_tiles(Index head_dim, Index& tile_q, Index& tile_k) {
  tile_q = head_dim <= 64 ? 64 : 32;
  tile_k = 128;
}

template <class T>
struct Prepared {
  Tensor<T> tensor;  // last dimension contiguous
  Operand<T> operand;
};

template <class T>
Prepared<T> prepare(const Tensor<T>& x) {
  Tensor<T> t = x.dim() == 4 && (x.strides()[3] == 1 || x.size(3) <= 1) ? x.detach() : veil::detail::copy_contiguous(x);
  return {t, Operand<T>{t.data(), t.strides()[0], t.strides()[1], t.strides()[2]}};
}

template <class T>
void check_fully_masked_rows(const Tensor<T>& logsumexp, const AttentionShape& s) {
  const T* lse = logsumexp.data();
  std::ostringstream rows;
  Index count = 0;
  for (Index row = 0; row < logsumexp.numel(); ++row)
    if (lse[row] == -std::numeric_limits<T>::infinity()) {
      if (count < 8) {
        const Index i = row % s.query_length, bh = row / s.query_length;
        rows << (count ? ", " : "") << "(b=" << bh / s.heads << ", h=" << bh % s.heads << ", i=" << i << ")";
      }
      ++count;
    }
  VEIL_CHECK(count == 0, MaskError, "scaled_dot_product_attention: ", count, " query rows keep no key: ", rows.str(),
             count > 8 ? ", ..." : "", " (fully_masked_rows = throw_error)");
}

}  // namespace detail

/// The fused attention returning the output and the per-row logsumexp.
template <class T>
AttentionResult<T> scaled_dot_product_attention_with_logsumexp(const Tensor<T>& q, const Tensor<T>& k,
                                                                const Tensor<T>& v, const mask::Mask& mask = mask::none(),
                                                                const AttentionOptions& options = {}) {
  static_assert(std::is_floating_point_v<T>, "scaled_dot_product_attention: T must be float or double");
  const AttentionShape s = detail::check_inputs(q, k, v, options);
  detail::KernelConfig config;
  config.scale = detail::scale_of<T>(s, options);
  config.dropout = options.dropout;
  detail::choose_tiles(s.head_dim, config.tile_q, config.tile_k);
  const mask::Geometry geometry{s.batch, s.heads, s.query_length, s.key_length, config.tile_q, config.tile_k};
  std::shared_ptr<const mask::Bound<T>> bound = mask::bind<T>(mask, geometry);
  // Drawn only after the mask validated: a call that throws leaves the generator untouched.
  if (options.dropout > 0) config.dropout_seed = options.generator->next_bits();

  const auto query = detail::prepare(q), key = detail::prepare(k), value = detail::prepare(v);
  Tensor<T> out = Tensor<T>::empty({s.batch, s.heads, s.query_length, s.value_dim});
  Tensor<T> row_max = Tensor<T>::empty({s.batch, s.heads, s.query_length});
  Tensor<T> row_log_sum = Tensor<T>::empty({s.batch, s.heads, s.query_length});
  detail::attention_forward(query.operand, key.operand, value.operand, *bound, s, config, out.data(), row_max.data(),
                            row_log_sum.data());
  Tensor<T> logsumexp = Tensor<T>::empty({s.batch, s.heads, s.query_length});
  for (Index i = 0; i < logsumexp.numel(); ++i) logsumexp.data()[i] = row_max.data()[i] + row_log_sum.data()[i];
  if (options.fully_masked_rows == FullyMaskedRows::throw_error) detail::check_fully_masked_rows(logsumexp, s);

  std::vector<Tensor<T>> biases;
  mask::collect_additive<T>(mask, biases);
  std::vector<const Tensor<T>*> inputs{&q, &k, &v};
  for (const auto& bias : biases) inputs.push_back(&bias);

  out = autograd::record<T>(
      "scaled_dot_product_attention", out, inputs,
      [s, config, bound, query, key, value, out = out.detach(), row_max, row_log_sum,
       bias_shapes = [&] {
         std::vector<Shape> shapes;
         for (const auto& bias : biases) shapes.push_back(bias.shape());
         return shapes;
       }()](const Tensor<T>& grad_output, const autograd::Node<T>& node) {
        const auto grad_out = detail::prepare(grad_output);
        Tensor<T> grad_q = Tensor<T>::empty({s.batch, s.heads, s.query_length, s.head_dim});
        Tensor<T> grad_k = Tensor<T>::empty({s.batch, s.kv_heads, s.key_length, s.head_dim});
        Tensor<T> grad_v = Tensor<T>::empty({s.batch, s.kv_heads, s.key_length, s.value_dim});
        bool bias_needs_grad = false;
        for (std::size_t b = 0; b < bias_shapes.size(); ++b) bias_needs_grad |= node.needs_input_grad(3 + b);
        Tensor<T> grad_logits;
        if (bias_needs_grad) grad_logits = zeros<T>({s.batch, s.heads, s.query_length, s.key_length});
        detail::attention_backward(query.operand, key.operand, value.operand, *bound, s, config, out.data(),
                                   row_max.data(), row_log_sum.data(), grad_out.operand, grad_q.data(), grad_k.data(), grad_v.data(),
                                   bias_needs_grad ? grad_logits.data() : nullptr);
        std::vector<Tensor<T>> grads{grad_q, grad_k, grad_v};
        for (std::size_t b = 0; b < bias_shapes.size(); ++b)
          grads.push_back(node.needs_input_grad(3 + b) ? veil::detail::sum_to(grad_logits, bias_shapes[b]) : Tensor<T>());
        return grads;
      });
  return {out, logsumexp, {}};
}

}  // namespace veil::attention

namespace veil {

/// Masked scaled dot-product attention through the fused kernel (see the file comment).
/// q: [B, H, Lq, D], k: [B, Hkv, Lk, D], v: [B, Hkv, Lk, Dv] -> [B, H, Lq, Dv].
template <class T>
Tensor<T> scaled_dot_product_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                       const mask::Mask& mask = mask::none(),
                                       const attention::AttentionOptions& options = {}) {
  return attention::scaled_dot_product_attention_with_logsumexp(q, k, v, mask, options).output;
}

}  // namespace veil

// The reference attention: matmul → mask → softmax → matmul, built from autograd ops with a
// materialised [B, H, Lq, Lk] mask. It is the executable specification of the mask semantics,
// the oracle the fused kernel is tested against and the baseline it is benchmarked against.
// O(Lq·Lk) memory per call: use scaled_dot_product_attention for real work.
//
// Semantics it spells out: scores of masked edges are *selected* to -inf (not added), so NaN in
// a masked bias entry or key never reaches the output; keys and values that no query keeps are
// replaced by 0 before the products; rows with no kept key output 0 and get zero gradient.
#pragma once

#include <algorithm>
#include <limits>

#include "veil/attention/fused_kernel.hpp"
#include "veil/attention/options.hpp"
#include "veil/attention/scaled_dot_product.hpp"
#include "veil/ops.hpp"

namespace veil::attention {

namespace detail {

/// [B, Hkv, L, X] -> [B, H, L, X]: each key/value head serves `group` consecutive query heads.
template <class T>
Tensor<T> repeat_kv_heads(const Tensor<T>& x, Index group) {
  if (group == 1) return x;
  const Shape& s = x.shape();
  return reshape(expand(unsqueeze(x, 2), {s[0], s[1], group, s[2], s[3]}), {s[0], s[1] * group, s[2], s[3]});
}

}  // namespace detail

/// Same contract as veil::scaled_dot_product_attention, computed the unfused way.
template <class T>
AttentionResult<T> reference_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                       const mask::Mask& mask = mask::none(), const AttentionOptions& options = {}) {
  const AttentionShape s = detail::check_inputs(q, k, v, options);
  const T scale = static_cast<T>(detail::scale_of<T>(s, options));
  constexpr T minus_infinity = -std::numeric_limits<T>::infinity();
  const Index B = s.batch, H = s.heads, Lq = s.query_length, Lk = s.key_length;

  const Tensor<bool> keep = mask::materialize<T>(mask, B, H, Lq, Lk);
  // Rows with a kept key, and keys some query of the head keeps.
  Tensor<bool> row_alive = zeros<bool>({B, H, Lq, 1}), key_used = zeros<bool>({B, H, Lk, 1});
  for (Index bh = 0; bh < B * H; ++bh)
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j)
        if (keep.data()[(bh * Lq + i) * Lk + j]) row_alive.data()[bh * Lq + i] = key_used.data()[bh * Lk + j] = true;

  const Tensor<T> zero = zeros<T>({});
  const Tensor<T> keys = where(key_used, detail::repeat_kv_heads(k, s.group()), zero);
  const Tensor<T> values = where(key_used, detail::repeat_kv_heads(v, s.group()), zero);
  Tensor<T> scores = matmul(q, transpose(keys, -1, -2)) * scale;
  std::vector<Tensor<T>> biases;
  mask::collect_additive<T>(mask, biases);
  for (const auto& bias : biases) scores = scores + bias;
  // An edge the mask keeps but whose biased score is -inf (an additive -inf entry under `|`) has
  // weight exactly 0: cut it like a masked edge, so that a row left with no finite score is fully
  // masked (output 0, zero gradient), as in the fused kernel, instead of 0/0 = NaN in softmax.
  Tensor<bool> live = keep;
  if (!biases.empty()) {
    live = veil::detail::copy_contiguous(keep);
    const Tensor<T> plain = scores.detach().contiguous();
    for (Index e = 0; e < live.numel(); ++e)
      if (live.data()[e] && plain.data()[e] == minus_infinity) live.data()[e] = false;
    for (Index row = 0; row < B * H * Lq; ++row)
      row_alive.data()[row] = std::any_of(live.data() + row * Lk, live.data() + (row + 1) * Lk, [](bool x) { return x; });
  }
  scores = where(live, scores, full<T>({}, minus_infinity));

  Tensor<T> logsumexp = Tensor<T>::empty({B, H, Lq});
  {
    const Tensor<T> plain = scores.detach().contiguous();
    for (Index row = 0; row < B * H * Lq; ++row) {
      const T* x = plain.data() + row * Lk;
      T max = minus_infinity;
      for (Index j = 0; j < Lk; ++j) max = std::max(max, x[j]);
      T sum = 0;
      if (max != minus_infinity)
        for (Index j = 0; j < Lk; ++j) sum += std::exp(x[j] - max);
      logsumexp.data()[row] = max == minus_infinity ? minus_infinity : max + std::log(sum);
    }
  }
  Tensor<T> probabilities = where(row_alive, softmax(scores, -1), zero);
  if (options.dropout > 0) {
    const std::uint64_t seed = options.generator->next_bits();
    const T keep_scale = static_cast<T>(1.0 / (1.0 - options.dropout));
    const std::uint64_t threshold = veil::detail::unit_threshold(options.dropout);
    Tensor<T> multiplier = Tensor<T>::empty({B, H, Lq, Lk});
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        for (Index i = 0; i < Lq; ++i)
          for (Index j = 0; j < Lk; ++j)
            multiplier.data()[((b * H + h) * Lq + i) * Lk + j] =
                detail::dropout_keeps(seed, threshold, s, b, h, i, j) ? keep_scale : T(0);
    probabilities = probabilities * multiplier;
  }
  Tensor<T> out = matmul(probabilities, values);
  if (options.fully_masked_rows == FullyMaskedRows::throw_error) detail::check_fully_masked_rows(logsumexp, s);
  return {out, logsumexp, probabilities};
}

}  // namespace veil::attention

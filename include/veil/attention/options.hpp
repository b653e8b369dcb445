// Options, shapes and argument validation shared by the fused and the reference attention paths.
#pragma once

#include <cmath>
#include <optional>

#include "veil/attention/mask.hpp"

namespace veil::attention {

/// What to do with query rows whose keys are all masked.
enum class FullyMaskedRows {
  zero,        // output exactly 0, logsumexp -inf, zero gradient (what packed batches need)
  throw_error  // throw MaskError naming the rows
};

struct AttentionOptions {
  std::optional<double> scale;     // multiplies q·k; default 1/sqrt(D)
  double dropout = 0.0;            // probability of zeroing an attention weight; needs `generator`
  Generator* generator = nullptr;  // source of the dropout seed (one draw per call)
  FullyMaskedRows fully_masked_rows = FullyMaskedRows::zero;
};

/// Extents of one attention call, in the glossary's letters.
struct AttentionShape {
  Index batch, heads, kv_heads, query_length, key_length, head_dim, value_dim;
  Index group() const { return heads / kv_heads; }
};

namespace detail {

/// Checks q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] with H % Hkv == 0, and the
/// options. Throws ShapeError / ValueError naming the argument, the expected and the actual value.
template <class T>
AttentionShape check_inputs(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const AttentionOptions& options) {
  VEIL_CHECK(q.defined() && k.defined() && v.defined(), ValueError,
             "scaled_dot_product_attention: q, k and v must be defined tensors");
  VEIL_CHECK(q.dim() == 4, ShapeError, "scaled_dot_product_attention: q must be [B, H, Lq, D], got rank ", q.dim(),
             " shape ", to_string(q.shape()));
  VEIL_CHECK(k.dim() == 4, ShapeError, "scaled_dot_product_attention: k must be [B, Hkv, Lk, D], got rank ", k.dim(),
             " shape ", to_string(k.shape()));
  VEIL_CHECK(v.dim() == 4, ShapeError, "scaled_dot_product_attention: v must be [B, Hkv, Lk, Dv], got rank ", v.dim(),
             " shape ", to_string(v.shape()));
  const AttentionShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  VEIL_CHECK(k.size(0) == s.batch && v.size(0) == s.batch, ShapeError,
             "scaled_dot_product_attention: batch sizes differ: expected k and v to have q's batch size ", s.batch,
             ", got q ", to_string(q.shape()), ", k ", to_string(k.shape()), ", v ", to_string(v.shape()));
  VEIL_CHECK(v.size(1) == s.kv_heads, ShapeError, "scaled_dot_product_attention: k has ", s.kv_heads,
             " heads but v has ", v.size(1), " (k ", to_string(k.shape()), ", v ", to_string(v.shape()), ")");
  VEIL_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0, ShapeError, "scaled_dot_product_attention: q has ", s.heads,
             " heads, which is not a multiple of k's ", s.kv_heads, " heads (grouped-query attention needs H % Hkv == 0)");
  VEIL_CHECK(k.size(3) == s.head_dim, ShapeError, "scaled_dot_product_attention: q has head dim ", s.head_dim,
             " but k has ", k.size(3), " (q ", to_string(q.shape()), ", k ", to_string(k.shape()), ")");
  VEIL_CHECK(v.size(2) == s.key_length, ShapeError, "scaled_dot_product_attention: k has ", s.key_length,
             " keys but v has ", v.size(2), " (k ", to_string(k.shape()), ", v ", to_string(v.shape()), ")");
  VEIL_CHECK(options.dropout >= 0.0 && options.dropout < 1.0, ValueError,
             "scaled_dot_product_attention: dropout must be in [0, 1), got ", options.dropout);
  VEIL_CHECK(options.dropout == 0.0 || options.generator != nullptr, ValueError,
             "scaled_dot_product_attention: dropout ", options.dropout, " > 0 needs options.generator, got none");
  if (options.scale)
    VEIL_CHECK(std::isfinite(*options.scale), ValueError, "scaled_dot_product_attention: scale must be finite, got ",
               *options.scale);
  return s;
}

template <class T>
double scale_of(const AttentionShape& s, const AttentionOptions& options) {
  return options.scale ? *options.scale : 1.0 / std::sqrt(static_cast<double>(std::max<Index>(s.head_dim, 1)));
}

}  // namespace detail
}  // namespace veil::attention

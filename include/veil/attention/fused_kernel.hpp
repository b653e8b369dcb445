// The fused masked-attention kernels: FlashAttention-2 (Dao 2023, arXiv 2307.08691) on CPU.
//
// Glossary: B batch, H query heads, Hkv key/value heads (H % Hkv == 0, group G = H / Hkv),
// Lq / Lk query / key length, D query/key head dim, Dv value head dim.
// q: [B, H, Lq, D]  k: [B, Hkv, Lk, D]  v: [B, Hkv, Lk, Dv]  ->  out: [B, H, Lq, Dv], m, log l: [B, H, Lq]
//
// Forward, per (b, h, query tile), over key tiles: S = (scale·Q)Kᵀ (+ bias), masked entries set to
// -inf, online softmax (running max m, running sum l, accumulator O rescaled when m grows),
// normalised once at the end. Saves only O, m and log l. (Not their sum, the logsumexp, as
// FlashAttention does: when a large finite bias such as -1e30 sits on every kept score, m + log l
// rounds to m and P recomputed from it would sum to the number of kept keys instead of 1.)
// Backward, per (b, kv head, key-tile partition), key tiles outer with dK/dV tiles kept hot:
// recompute P = exp((S - m) - log l) per tile, dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP - δ) with
// δ = rowsum(dO ∘ O), dQ += dS K, dK += dSᵀ (scale·Q). dQ needs no atomics: a work item owns
// whole query heads, or (few heads) a private dQ per key-tile partition summed in fixed order.
//
// Cut edges. Empty tiles are never read. In partial tiles, masked scores are *selected* to -inf
// (so NaN/inf in a masked key or bias cannot leak through S) and masked dS are selected to 0.
// A product P·V or dS·K would still turn 0 · NaN into NaN, so when a partial tile's V (forward)
// or K (backward) holds a non-finite value, the GEMM reads a copy whose rows no query of the
// tile keeps are zeroed: keys masked for every query are never read, bit for bit. (A key kept by
// some query of a tile is read by the whole tile: NaN in it reaches that tile's other rows.)
// Fully masked rows end with l = 0: output 0, m = log l = -inf, and they are masked in every tile
// they appear in, so their dS, and hence dQ, is exactly 0.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "veil/attention/mask.hpp"
#include "veil/attention/options.hpp"
#include "veil/core/parallel.hpp"

namespace veil::attention::detail {

using mask::TileKind;

/// A read-only [B, heads, L, dim] operand whose last dimension is contiguous.
template <class T>
struct Operand {
  const T* data = nullptr;
  Index stride_b = 0, stride_h = 0, stride_l = 0;
  const T* row(Index b, Index h, Index l) const { return data + b * stride_b + h * stride_h + l * stride_l; }
};

using KernelShape = AttentionShape;

struct KernelConfig {
  double scale = 1.0;
  double dropout = 0.0;         // probability of dropping an attention weight
  std::uint64_t dropout_seed = 0;
  Index tile_q = 64;            // query rows per tile
  Index tile_k = 128;           // keys per tile
};

/// Dropout keep test for edge (b, h, i, j): a pure function of the seed and the edge, so backward
/// regenerates exactly the forward's mask without storing it.
/// threshold = unit_threshold(p): the edge is kept when its uniform draw is at least p.
inline bool dropout_keeps(std::uint64_t seed, std::uint64_t threshold, const KernelShape& s, Index b, Index h, Index i,
                          Index j) {
  const auto counter = static_cast<std::uint64_t>(((b * s.heads + h) * s.query_length + i) * s.key_length + j);
  return (veil::detail::random_bits(seed, counter) >> 11) >= threshold;
}

/// Scratch memory aligned like Eigen's own: Eigen's vectorised row reductions peel a scalar head
/// up to the first aligned element, so the summation order (and the last bit of a row sum)
/// would otherwise depend on where malloc happened to place the buffer.
template <class T>
using Scratch = std::vector<T, Eigen::aligned_allocator<T>>;

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using RowArrayMap = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;

template <class T>
ConstMatrixMap<T> tile_of(const Operand<T>& x, Index b, Index h, Index l0, Index rows, Index cols) {
  return ConstMatrixMap<T>(x.row(b, h, l0), rows, cols, Eigen::OuterStride<>(x.stride_l));
}

template <class T>
bool all_finite(const Operand<T>& x, Index b, Index h, Index l0, Index rows, Index cols) {
  for (Index r = 0; r < rows; ++r) {
    const T* row = x.row(b, h, l0 + r);
    T sum = 0;
    for (Index c = 0; c < cols; ++c) sum += row[c] * T(0);  // 0·x is 0 for finite x, NaN otherwise
    if (sum != sum) return false;
  }
  return true;
}

/// finite[(b · heads + h) · tiles + t] = 1 when rows [t·tile, (t+1)·tile) of x[b, h] hold only
/// finite values: one pass per call, so partial tiles need not rescan K or V.
template <class T>
std::vector<std::uint8_t> finite_tiles(const Operand<T>& x, Index batch, Index heads, Index length, Index width,
                                       Index tile) {
  const Index tiles = (length + tile - 1) / tile;
  std::vector<std::uint8_t> finite(static_cast<std::size_t>(batch * heads * tiles));
  parallel_for(0, batch * heads * tiles, 16, [&](Index first, Index last) {
    for (Index item = first; item < last; ++item) {
      const Index t = item % tiles, bh = item / tiles, l0 = t * tile;
      finite[item] = all_finite(x, bh / heads, bh % heads, l0, std::min(tile, length - l0), width);
    }
  });
  return finite;
}

/// Rows [l0, l0 + count) of x with the rows no query of the tile keeps replaced by 0, in
/// `scratch`. Used instead of x when a partial tile holds NaN or inf: the product then runs the
/// same GEMM (so kept results are bit-identical to a clean run) without turning 0 · NaN into NaN.
template <class T>
ConstMatrixMap<T> unread_rows_zeroed(const Operand<T>& x, Index b, Index h, Index l0, Index count, Index width,
                                     const std::uint8_t* keep, Index rows, Index ld, Scratch<T>& scratch) {
  scratch.assign(static_cast<std::size_t>(count * width), T(0));
  for (Index c = 0; c < count; ++c) {
    bool read = false;
    for (Index r = 0; r < rows && !read; ++r) read = keep[r * ld + c] != 0;
    if (read) std::copy(x.row(b, h, l0 + c), x.row(b, h, l0 + c) + width, scratch.data() + c * width);
  }
  return ConstMatrixMap<T>(scratch.data(), count, width, Eigen::OuterStride<>(width));
}

/// P = 0 exactly on cut edges. Eigen's vectorised exp clamps its argument, so exp(-inf) is ~3e-39
/// in float, not 0: without this, 1e30 in a cut value would leak and cut keys would get dK, dV ≠ 0.
/// (Eigen 3.4's select() is not vectorised, hence exp first and this byte-mask pass after.)
template <class T>
void zero_cut_edges(T* row, const std::uint8_t* keep, Index count) {
  for (Index c = 0; c < count; ++c) row[c] = keep[c] ? row[c] : T(0);
}

/// The mask of one (b, h) as the kernel asks it. Interval masks (causal, windows, padding,
/// documents and their &) answer from per-row [lo, hi) computed once per head, with no virtual
/// call per row and tile; other masks forward to the bound mask.
template <class T>
class HeadMask {
 public:
  HeadMask(const mask::Bound<T>& mask, Index b, Index h, Index q_begin, Index q_end)
      : mask_(&mask), b_(b), h_(h), q_begin_(q_begin), interval_(mask.is_interval()) {
    if (!interval_) return;
    lo_.resize(static_cast<std::size_t>(q_end - q_begin)), hi_.resize(lo_.size());
    for (Index i = q_begin; i < q_end; ++i) mask.row_interval(b, h, i, lo_[i - q_begin], hi_[i - q_begin]);
  }

  TileKind classify(Index q0, Index rows, Index k0, Index cols) const {
    if (!interval_) return mask_->classify(b_, h_, q0, q0 + rows, k0, k0 + cols);
    bool all_full = true, any_kept = false;
    for (Index r = q0 - q_begin_; r < q0 - q_begin_ + rows; ++r) {
      all_full = all_full && lo_[r] <= k0 && hi_[r] >= k0 + cols;
      any_kept = any_kept || std::max(lo_[r], k0) < std::min(hi_[r], k0 + cols);
    }
    return all_full ? TileKind::full : any_kept ? TileKind::partial : TileKind::empty;
  }

  /// Narrows keys [k0, k0 + cols) to the columns some row of the tile keeps (interval masks:
  /// the diagonal tile of a causal mask needs only its lower part).
  void trim(Index q0, Index rows, Index& k0, Index& cols) const {
    if (!interval_) return;
    Index begin = k0 + cols, end = k0;
    for (Index r = q0 - q_begin_; r < q0 - q_begin_ + rows; ++r) {
      const Index lo = std::max(lo_[r], k0), hi = std::min(hi_[r], k0 + cols);
      if (lo < hi) begin = std::min(begin, lo), end = std::max(end, hi);
    }
    if (begin >= end) begin = end = k0;
    k0 = begin, cols = end - begin;
  }

  void fill(Index q0, Index rows, Index k0, Index cols, std::uint8_t* keep, Index ld) const {
    if (!interval_) return mask_->fill(b_, h_, q0, q0 + rows, k0, k0 + cols, keep, ld);
    for (Index r = 0; r < rows; ++r) {
      std::uint8_t* row = keep + r * ld;
      const Index begin = std::clamp(lo_[q0 - q_begin_ + r], k0, k0 + cols) - k0;
      const Index end = std::clamp(hi_[q0 - q_begin_ + r], k0, k0 + cols) - k0;
      std::fill(row, row + cols, std::uint8_t{0});
      if (begin < end) std::fill(row + begin, row + end, std::uint8_t{1});
    }
  }

  bool is_interval() const { return interval_; }
  bool classifies_exactly() const { return mask_->classifies_exactly(); }
  bool has_bias() const { return mask_->has_bias(); }
  void add_bias(Index q0, Index rows, Index k0, Index cols, T* scores, Index ld) const {
    mask_->add_bias(b_, h_, q0, q0 + rows, k0, k0 + cols, scores, ld);
  }

 private:
  const mask::Bound<T>* mask_;
  Index b_, h_, q_begin_;
  bool interval_;
  std::vector<Index> lo_, hi_;
};

/// scores (rows × cols, leading dimension ld) for one tile: S = Qs Kᵀ (+ bias); masked -> -inf.
/// Returns the tile kind after looking at the keep bytes (a partial tile may turn out empty).
template <class T>
TileKind tile_scores(const HeadMask<T>& mask, TileKind kind, const ConstMatrixMap<T>& scaled_query,
                     const Operand<T>& key, Index b, Index kv_head, Index q0, Index k0, Index rows, Index cols,
                     T* scores, std::uint8_t* keep, Index ld) {
  if (kind == TileKind::partial) {
    // Trimmed tiles of interval masks are classified again, exactly and cheaply (one interval
    // per row): key-padding tiles then usually turn out full and skip every per-element step.
    if (mask.is_interval()) kind = cols == 0 ? TileKind::empty : mask.classify(q0, rows, k0, cols);
    if (kind == TileKind::partial) mask.fill(q0, rows, k0, cols, keep, ld);
    if (kind == TileKind::partial && !mask.classifies_exactly()) {
      Index kept = 0;
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c) kept += keep[r * ld + c];
      kind = kept == 0 ? TileKind::empty : kept == rows * cols ? TileKind::full : TileKind::partial;
    }
    if (kind == TileKind::empty) return kind;
  }
  MatrixMap<T> s(scores, rows, cols, Eigen::OuterStride<>(ld));
  s.noalias() = scaled_query * tile_of(key, b, kv_head, k0, cols, scaled_query.cols()).transpose();
  if (mask.has_bias()) mask.add_bias(q0, rows, k0, cols, scores, ld);
  if (kind == TileKind::partial) {
    constexpr T minus_infinity = -std::numeric_limits<T>::infinity();
    for (Index r = 0; r < rows; ++r) {
      T* row = scores + r * ld;
      const std::uint8_t* keep_row = keep + r * ld;
      for (Index c = 0; c < cols; ++c) row[c] = keep_row[c] ? row[c] : minus_infinity;
    }
  }
  return kind;
}

/// Fills out [B, H, Lq, Dv] and the row maxima and log row sums [B, H, Lq] (all contiguous).
template <class T>
void attention_forward(const Operand<T>& query, const Operand<T>& key, const Operand<T>& value,
                       const mask::Bound<T>& mask, const KernelShape& s, const KernelConfig& config, T* out,
                       T* saved_row_max, T* saved_row_log_sum) {
  const Index tile_q = config.tile_q, tile_k = config.tile_k;
  const Index tiles_q = (s.query_length + tile_q - 1) / tile_q;
  const Index tiles_k = (s.key_length + tile_k - 1) / tile_k;
  const T scale = static_cast<T>(config.scale);
  const T keep_scale = config.dropout > 0 ? static_cast<T>(1.0 / (1.0 - config.dropout)) : T(1);
  const std::uint64_t dropout_threshold = veil::detail::unit_threshold(config.dropout);
  constexpr T minus_infinity = -std::numeric_limits<T>::infinity();
  const Index D = s.head_dim, Dv = s.value_dim;

  const std::vector<std::uint8_t> value_finite = finite_tiles(value, s.batch, s.kv_heads, s.key_length, Dv, tile_k);
  parallel_for_dynamic(s.batch * s.heads * tiles_q, [&](Index item) {
    // Dynamic scheduling keeps threads busy when tiles differ in cost (causal, documents).
    const Index qt = item % tiles_q, bh = item / tiles_q;
    const Index b = bh / s.heads, h = bh % s.heads, kv_head = h / s.group();
    const Index q0 = qt * tile_q, rows = std::min(tile_q, s.query_length - q0);
    const HeadMask<T> head_mask(mask, b, h, q0, q0 + rows);

    Scratch<T> scaled_query_buffer(static_cast<std::size_t>(rows * D));
    Scratch<T> scores(static_cast<std::size_t>(rows * tile_k)), dropped;
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(rows * tile_k));
    Scratch<T> sanitized;
    RowMatrix<T> accumulator = RowMatrix<T>::Zero(rows, Dv);
    std::vector<T> row_max(static_cast<std::size_t>(rows), minus_infinity), row_sum(static_cast<std::size_t>(rows), T(0));
    if (config.dropout > 0) dropped.resize(scores.size());

    MatrixMap<T>(scaled_query_buffer.data(), rows, D, Eigen::OuterStride<>(D)) = tile_of(query, b, h, q0, rows, D) * scale;
    const ConstMatrixMap<T> scaled_query(scaled_query_buffer.data(), rows, D, Eigen::OuterStride<>(D));

    for (Index kt = 0; kt < tiles_k; ++kt) {
      Index k0 = kt * tile_k, cols = std::min(tile_k, s.key_length - k0);
      TileKind kind = head_mask.classify(q0, rows, k0, cols);
      if (kind == TileKind::empty) continue;
      if (kind == TileKind::partial) head_mask.trim(q0, rows, k0, cols);
      kind = tile_scores(head_mask, kind, scaled_query, key, b, kv_head, q0, k0, rows, cols, scores.data(), keep.data(),
                         tile_k);
      if (kind == TileKind::empty) continue;

      for (Index r = 0; r < rows; ++r) {
        RowArrayMap<T> row(scores.data() + r * tile_k, cols);
        const T tile_max = row.maxCoeff();
        const T new_max = std::max(row_max[r], tile_max);
        if (new_max == minus_infinity) {  // nothing kept in this row yet: P row is 0
          row.setZero();
          continue;
        }
        const T correction = std::exp(row_max[r] - new_max);  // exp(-inf) = 0 on the first kept tile
        row = (row - new_max).exp();
        if (kind == TileKind::partial) zero_cut_edges(row.data(), keep.data() + r * tile_k, cols);
        row_sum[r] = row_sum[r] * correction + row.sum();
        row_max[r] = new_max;
        if (correction != T(1)) accumulator.row(r) *= correction;
      }

      const T* probabilities = scores.data();
      if (config.dropout > 0) {
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < cols; ++c)
            dropped[r * tile_k + c] = dropout_keeps(config.dropout_seed, dropout_threshold, s, b, h, q0 + r, k0 + c)
                                          ? scores[r * tile_k + c] * keep_scale
                                          : T(0);
        probabilities = dropped.data();
      }
      const ConstMatrixMap<T> p(probabilities, rows, cols, Eigen::OuterStride<>(tile_k));
      if (kind == TileKind::partial && !value_finite[(b * s.kv_heads + kv_head) * tiles_k + kt]) {
        accumulator.noalias() += p * unread_rows_zeroed(value, b, kv_head, k0, cols, Dv, keep.data(), rows, tile_k, sanitized);
      } else {
        accumulator.noalias() += p * tile_of(value, b, kv_head, k0, cols, Dv);
      }
    }

    for (Index r = 0; r < rows; ++r) {
      T* out_row = out + ((bh * s.query_length) + q0 + r) * Dv;
      const Index row_index = bh * s.query_length + q0 + r;
      if (row_sum[r] == T(0)) {  // fully masked row: output exactly 0
        std::fill(out_row, out_row + Dv, T(0));
        saved_row_max[row_index] = saved_row_log_sum[row_index] = minus_infinity;
        continue;
      }
      const T inverse = T(1) / row_sum[r];
      for (Index d = 0; d < Dv; ++d) out_row[d] = accumulator(r, d) * inverse;
      saved_row_max[row_index] = row_max[r];
      saved_row_log_sum[row_index] = std::log(row_sum[r]);
    }
  });
}

/// Gradients. grad_query [B, H, Lq, D], grad_key [B, Hkv, Lk, D], grad_value [B, Hkv, Lk, Dv] are
/// contiguous and overwritten. grad_logits, when not null, is a contiguous [B, H, Lq, Lk] buffer
/// receiving dS (the gradient of the scaled, biased scores) for an additive bias that needs one.
template <class T>
void attention_backward(const Operand<T>& query, const Operand<T>& key, const Operand<T>& value,
                        const mask::Bound<T>& mask, const KernelShape& s, const KernelConfig& config, const T* out,
                        const T* saved_row_max, const T* saved_row_log_sum, const Operand<T>& grad_out, T* grad_query, T* grad_key, T* grad_value,
                        T* grad_logits) {
  const Index tile_q = config.tile_q, tile_k = config.tile_k;
  const Index tiles_q = (s.query_length + tile_q - 1) / tile_q;
  const Index tiles_k = (s.key_length + tile_k - 1) / tile_k;
  const Index D = s.head_dim, Dv = s.value_dim, G = s.group();
  const T scale = static_cast<T>(config.scale);
  const T keep_scale = config.dropout > 0 ? static_cast<T>(1.0 / (1.0 - config.dropout)) : T(1);
  const std::uint64_t dropout_threshold = veil::detail::unit_threshold(config.dropout);
  constexpr T minus_infinity = -std::numeric_limits<T>::infinity();

  // δ_i = rowsum(dO_i ∘ O_i) = Σ_j P_ij dP_ij: the softmax backward's row term, O(Lq·Dv).
  std::vector<T> delta(static_cast<std::size_t>(s.batch * s.heads * s.query_length));
  parallel_for(0, s.batch * s.heads * s.query_length, 256, [&](Index first, Index last) {
    for (Index row = first; row < last; ++row) {
      const Index bh = row / s.query_length, i = row % s.query_length;
      const T* o = out + row * Dv;
      const T* g = grad_out.row(bh / s.heads, bh % s.heads, i);
      T sum = 0;
      for (Index d = 0; d < Dv; ++d) sum += o[d] * g[d];
      delta[row] = sum;
    }
  });

  // Few (b, kv head) pairs: split each pair's key tiles into partitions with private dQ.
  const Index pairs = s.batch * s.kv_heads;
  const Index partitions =
      std::clamp<Index>((2 * num_threads() + pairs - 1) / std::max<Index>(pairs, 1), 1, std::max<Index>(tiles_k, 1));
  const Index query_block = G * s.query_length * D;  // dQ of one (b, kv head) group
  std::vector<T> partial_grad_query;
  if (partitions > 1) partial_grad_query.assign(static_cast<std::size_t>(pairs * partitions * query_block), T(0));

  const std::vector<std::uint8_t> key_finite_tiles = finite_tiles(key, s.batch, s.kv_heads, s.key_length, D, tile_k);
  parallel_for_dynamic(pairs * partitions, [&](Index item) {
    const Index pair = item / partitions, partition = item % partitions;
    const Index b = pair / s.kv_heads, kv_head = pair % s.kv_heads;
    T* dq_group = partitions > 1 ? partial_grad_query.data() + item * query_block
                                 : grad_query + (b * s.heads + kv_head * G) * s.query_length * D;
    if (partitions == 1) std::fill(dq_group, dq_group + query_block, T(0));

    Scratch<T> scores(static_cast<std::size_t>(tile_q * tile_k)), grad_p(scores.size()), dropped;
    std::vector<std::uint8_t> keep(scores.size()), dropout_keep;
    Scratch<T> sanitized;
    Scratch<T> scaled_query_buffer(static_cast<std::size_t>(tile_q * D));
    if (config.dropout > 0) dropped.resize(scores.size()), dropout_keep.resize(scores.size());
    RowMatrix<T> dk_tile(tile_k, D), dv_tile(tile_k, Dv);
    std::vector<HeadMask<T>> head_masks;
    for (Index g = 0; g < G; ++g) head_masks.emplace_back(mask, b, kv_head * G + g, 0, s.query_length);

    for (Index kt = partition; kt < tiles_k; kt += partitions) {
      const Index k0 = kt * tile_k, cols = std::min(tile_k, s.key_length - k0);
      dk_tile.setZero();
      dv_tile.setZero();
      const auto k_tile = tile_of(key, b, kv_head, k0, cols, D);
      const auto v_tile = tile_of(value, b, kv_head, k0, cols, Dv);
      const bool key_finite = key_finite_tiles[(b * s.kv_heads + kv_head) * tiles_k + kt];
      for (Index g = 0; g < G; ++g) {
        const Index h = kv_head * G + g, bh = b * s.heads + h;
        for (Index qt = 0; qt < tiles_q; ++qt) {
          const Index q0 = qt * tile_q, rows = std::min(tile_q, s.query_length - q0);
          const HeadMask<T>& head_mask = head_masks[static_cast<std::size_t>(g)];
          TileKind kind = head_mask.classify(q0, rows, k0, cols);
          if (kind == TileKind::empty) continue;
          Index key_begin = k0, key_count = cols;  // this query tile's part of the key tile
          if (kind == TileKind::partial) head_mask.trim(q0, rows, key_begin, key_count);
          const Index offset = key_begin - k0;
          MatrixMap<T>(scaled_query_buffer.data(), rows, D, Eigen::OuterStride<>(D)) =
              tile_of(query, b, h, q0, rows, D) * scale;
          const ConstMatrixMap<T> scaled_query(scaled_query_buffer.data(), rows, D, Eigen::OuterStride<>(D));
          kind = tile_scores(head_mask, kind, scaled_query, key, b, kv_head, q0, key_begin, rows, key_count, scores.data(),
                             keep.data(), tile_k);
          if (kind == TileKind::empty) continue;

          // P = exp((S - m) - log l); rows with m = -inf are fully masked and only occur in partial
          // tiles, where every score of theirs is -inf: exp(-inf) = 0.
          for (Index r = 0; r < rows; ++r) {
            const Index row_index = bh * s.query_length + q0 + r;
            const T m = saved_row_max[row_index];
            RowArrayMap<T> row(scores.data() + r * tile_k, key_count);
            if (m == minus_infinity)
              row = row.exp();
            else
              row = ((row - m) - saved_row_log_sum[row_index]).exp();
            if (kind == TileKind::partial) zero_cut_edges(row.data(), keep.data() + r * tile_k, key_count);
          }
          const ConstMatrixMap<T> p(scores.data(), rows, key_count, Eigen::OuterStride<>(tile_k));
          const auto grad_out_tile = tile_of(grad_out, b, h, q0, rows, Dv);
          MatrixMap<T> dp(grad_p.data(), rows, key_count, Eigen::OuterStride<>(tile_k));

          if (config.dropout > 0) {
            for (Index r = 0; r < rows; ++r)
              for (Index c = 0; c < key_count; ++c) {
                const bool kept = dropout_keeps(config.dropout_seed, dropout_threshold, s, b, h, q0 + r, key_begin + c);
                dropout_keep[r * tile_k + c] = kept;
                dropped[r * tile_k + c] = kept ? scores[r * tile_k + c] * keep_scale : T(0);
              }
            dv_tile.middleRows(offset, key_count).noalias() +=
                ConstMatrixMap<T>(dropped.data(), rows, key_count, Eigen::OuterStride<>(tile_k)).transpose() * grad_out_tile;
          } else {
            dv_tile.middleRows(offset, key_count).noalias() += p.transpose() * grad_out_tile;
          }
          dp.noalias() = grad_out_tile * v_tile.middleRows(offset, key_count).transpose();

          // dS = P ∘ (dP - δ), overwriting dP; masked entries selected to exactly 0.
          for (Index r = 0; r < rows; ++r) {
            const T row_delta = delta[bh * s.query_length + q0 + r];
            T* dp_row = grad_p.data() + r * tile_k;
            const T* p_row = scores.data() + r * tile_k;
            if (config.dropout > 0) {
              const std::uint8_t* dk = dropout_keep.data() + r * tile_k;
              for (Index c = 0; c < key_count; ++c) dp_row[c] = dk[c] ? dp_row[c] * keep_scale : T(0);
            }
            for (Index c = 0; c < key_count; ++c) dp_row[c] = p_row[c] * (dp_row[c] - row_delta);
            if (kind == TileKind::partial) {
              const std::uint8_t* keep_row = keep.data() + r * tile_k;
              for (Index c = 0; c < key_count; ++c) dp_row[c] = keep_row[c] ? dp_row[c] : T(0);
            }
          }
          const ConstMatrixMap<T> ds(grad_p.data(), rows, key_count, Eigen::OuterStride<>(tile_k));

          MatrixMap<T> dq(dq_group + (g * s.query_length + q0) * D, rows, D, Eigen::OuterStride<>(D));
          if (kind == TileKind::partial && !key_finite) {
            dq.noalias() += ds * unread_rows_zeroed(key, b, kv_head, key_begin, key_count, D, keep.data(), rows, tile_k,
                                                    sanitized);
          } else {
            dq.noalias() += ds * k_tile.middleRows(offset, key_count);
          }
          dk_tile.middleRows(offset, key_count).noalias() += ds.transpose() * scaled_query;

          if (grad_logits != nullptr)
            for (Index r = 0; r < rows; ++r)
              std::copy(grad_p.data() + r * tile_k, grad_p.data() + r * tile_k + key_count,
                        grad_logits + ((bh * s.query_length) + q0 + r) * s.key_length + key_begin);
        }
      }
      T* dk_out = grad_key + ((b * s.kv_heads + kv_head) * s.key_length + k0) * D;
      T* dv_out = grad_value + ((b * s.kv_heads + kv_head) * s.key_length + k0) * Dv;
      MatrixMap<T>(dk_out, cols, D, Eigen::OuterStride<>(D)) = dk_tile.topRows(cols);
      MatrixMap<T>(dv_out, cols, Dv, Eigen::OuterStride<>(Dv)) = dv_tile.topRows(cols);
    }
  });

  // dQ = scale · Σ_partitions dQ_p, summed in partition order (deterministic for a thread count).
  parallel_for(0, pairs, 1, [&](Index first, Index last) {
    for (Index pair = first; pair < last; ++pair) {
      const Index b = pair / s.kv_heads, kv_head = pair % s.kv_heads;
      T* dq_group = grad_query + (b * s.heads + kv_head * G) * s.query_length * D;
      if (partitions > 1) {
        std::fill(dq_group, dq_group + query_block, T(0));
        for (Index partition = 0; partition < partitions; ++partition) {
          const T* part = partial_grad_query.data() + (pair * partitions + partition) * query_block;
          for (Index e = 0; e < query_block; ++e) dq_group[e] += part[e];
        }
      }
      for (Index e = 0; e < query_block; ++e) dq_group[e] *= scale;
    }
  });
}

}  // namespace veil::attention::detail

// Typed attention masks: one vocabulary with one meaning (DESIGN.md, "Masks").
//
// A mask says which edges (query i, key j) of attention are KEPT. Every constructor documents its
// keep rule; `a & b` keeps an edge when both keep it, `a | b` when either does; additive terms add.
// A mask is a small description, never an Lq×Lk matrix: at each attention call it is *bound* to
// the call's geometry (B, H, Lq, Lk and the kernel's tile sizes), which validates it (MaskError
// before any work) and lets it answer two questions cheaply:
//   classify(tile) -> empty | full | partial   (the fused kernel skips empty tiles and does no
//                                               per-element test on full ones)
//   fill(tile)     -> keep bytes for a partial tile (and add_bias for additive terms)
// Structured masks (causal, sliding window, key padding, documents) keep one interval of keys
// per query row, so they classify a tile in O(rows); an `&` of them stays an interval, so
// `documents & causal` is classified exactly. Dense allow/forbid/additive masks are summarised
// into a tile table once per call (the idea of FlexAttention's BlockMask and ggml's tile skip,
// computed here from the dense mask instead of stored by the user).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "veil/tensor.hpp"

namespace veil::mask {

enum class TileKind : std::uint8_t { empty, full, partial };

/// The attention call a mask is bound to.
struct Geometry {
  Index batch = 1;         // B
  Index heads = 1;         // H
  Index query_length = 0;  // Lq
  Index key_length = 0;    // Lk
  Index tile_q = 64;       // query rows per tile (dense masks are summarised at this granularity)
  Index tile_k = 64;       // keys per tile
};

/// FlexAttention-style predicate: keep edge (b, h, i, j)?
using Predicate = std::function<bool(Index b, Index h, Index i, Index j)>;
/// Optional tile classifier for a custom mask: the kind of rows [q0, q1) × keys [k0, k1) of (b, h).
/// It must be exact or conservative (answer `partial` when unsure).
using TileClassifier = std::function<TileKind(Index b, Index h, Index q0, Index q1, Index k0, Index k1)>;

/// Window extent meaning "no limit on this side".
inline constexpr Index unbounded = std::numeric_limits<Index>::max() / 4;

class Mask;

namespace spec {
struct None {};
struct Causal {
  bool bottom_right = true;
};
struct SlidingWindow {
  Index left = 0, right = 0;
};
struct KeyPadding {
  std::vector<Index> lengths;
};
/// offsets per batch row (one entry = shared by every row); query and key offsets may differ.
struct Documents {
  std::vector<std::vector<Index>> query_offsets, key_offsets;
};
struct Dense {
  Tensor<bool> values;
  bool keep_when = true;  // allow: true keeps; forbid: false keeps
};
struct Additive {
  std::variant<Tensor<float>, Tensor<double>> bias;
};
struct Custom {
  Predicate keep;
  TileClassifier classify;
};
struct And {
  std::shared_ptr<const Mask> a, b;
};
struct Or {
  std::shared_ptr<const Mask> a, b;
};
using Any = std::variant<None, Causal, SlidingWindow, KeyPadding, Documents, Dense, Additive, Custom, And, Or>;
}  // namespace spec

/// A typed attention mask. Build one with the constructors below and combine with & and |.
class Mask {
 public:
  Mask() : spec_(std::make_shared<const spec::Any>(spec::None{})) {}
  explicit Mask(spec::Any spec) : spec_(std::make_shared<const spec::Any>(std::move(spec))) {}
  const spec::Any& spec() const { return *spec_; }
  bool is_none() const { return std::holds_alternative<spec::None>(*spec_); }

 private:
  std::shared_ptr<const spec::Any> spec_;
};

namespace detail {

inline void check_offsets(const std::vector<Index>& offsets, const char* argument) {
  VEIL_CHECK(!offsets.empty(), MaskError, "documents: ", argument, " must hold at least one offset (0), got none");
  VEIL_CHECK(offsets[0] == 0, MaskError, "documents: ", argument, " must start at 0, got ", argument, "[0] = ",
             offsets[0]);
  for (std::size_t d = 1; d < offsets.size(); ++d)
    VEIL_CHECK(offsets[d] >= offsets[d - 1], MaskError, "documents: ", argument, " must be non-decreasing, got ",
               argument, "[", d, "] = ", offsets[d], " < ", argument, "[", d - 1, "] = ", offsets[d - 1]);
}

inline std::vector<Index> offsets_from_lengths(const std::vector<Index>& lengths) {
  std::vector<Index> offsets{0};
  for (std::size_t d = 0; d < lengths.size(); ++d) {
    VEIL_CHECK(lengths[d] >= 0, MaskError, "documents: lengths must be >= 0, got lengths[", d, "] = ", lengths[d]);
    VEIL_CHECK(lengths[d] <= std::numeric_limits<Index>::max() - offsets.back(), MaskError,
               "documents: lengths must sum to at most ", std::numeric_limits<Index>::max(), ", got lengths[", d,
               "] = ", lengths[d], " after a sum of ", offsets.back());
    offsets.push_back(offsets.back() + lengths[d]);
  }
  return offsets;
}

}  // namespace detail

// ---- constructors ------------------------------------------------------------------------------

/// Keeps every edge.
inline Mask none() { return Mask(spec::None{}); }

/// Keeps j <= i + (Lk - Lq): bottom-right aligned, as flash-attention >= 2.1 and xformers. Equals
/// PyTorch's is_causal when Lq == Lk; with Lq < Lk (decoding against a cache) the last query sees
/// every key. With Lq > Lk the first Lq - Lk rows keep nothing (output 0).
inline Mask causal() { return Mask(spec::Causal{true}); }

/// Keeps j <= i: PyTorch's is_causal alignment when Lq != Lk.
inline Mask causal_top_left() { return Mask(spec::Causal{false}); }

/// Keeps i' - left <= j <= i' + right with i' = i + (Lk - Lq). Pass mask::unbounded for no limit.
/// `causal() & sliding_window(w, 0)` is causal local attention over the last w + 1 keys.
inline Mask sliding_window(Index left, Index right) {
  VEIL_CHECK(left >= 0, MaskError, "sliding_window: left must be >= 0 (or mask::unbounded), got ", left);
  VEIL_CHECK(right >= 0, MaskError, "sliding_window: right must be >= 0 (or mask::unbounded), got ", right);
  return Mask(spec::SlidingWindow{std::min(left, unbounded), std::min(right, unbounded)});
}

/// Keeps j < lengths[b]: one valid key length per batch row (padding at the end of each row).
inline Mask key_padding(std::vector<Index> lengths) {
  for (std::size_t b = 0; b < lengths.size(); ++b)
    VEIL_CHECK(lengths[b] >= 0, MaskError, "key_padding: lengths must be >= 0, got lengths[", b, "] = ", lengths[b]);
  return Mask(spec::KeyPadding{std::move(lengths)});
}

/// Keeps (i, j) when i and j lie in the same packed sequence; the sequences have these lengths
/// (in order) and must cover the row exactly. Shared by every batch row. Block diagonal;
/// `documents(lengths) & causal()` is packed language-model training.
inline Mask documents(const std::vector<Index>& lengths) {
  auto offsets = detail::offsets_from_lengths(lengths);
  return Mask(spec::Documents{{offsets}, {offsets}});
}

/// documents() with different packings per batch row: lengths_per_row[b] for row b.
inline Mask documents(const std::vector<std::vector<Index>>& lengths_per_row) {
  spec::Documents docs;
  for (const auto& lengths : lengths_per_row) docs.query_offsets.push_back(detail::offsets_from_lengths(lengths));
  VEIL_CHECK(!docs.query_offsets.empty(), MaskError, "documents: expected lengths for at least one batch row, got none");
  docs.key_offsets = docs.query_offsets;
  return Mask(std::move(docs));
}

/// documents() from cumulative offsets (flash-attention's cu_seqlens): [0, l0, l0 + l1, ..., L].
inline Mask documents_from_offsets(std::vector<Index> offsets) {
  detail::check_offsets(offsets, "offsets");
  return Mask(spec::Documents{{offsets}, {offsets}});
}

/// Packed cross-attention: query sequence d spans [query_offsets[d], query_offsets[d+1]) and
/// attends to keys [key_offsets[d], key_offsets[d+1]). Both lists need the same number of sequences.
inline Mask documents_from_offsets(std::vector<Index> query_offsets, std::vector<Index> key_offsets) {
  detail::check_offsets(query_offsets, "query_offsets");
  detail::check_offsets(key_offsets, "key_offsets");
  VEIL_CHECK(query_offsets.size() == key_offsets.size(), MaskError, "documents: query_offsets has ",
             query_offsets.size(), " entries but key_offsets has ", key_offsets.size(), "; expected the same");
  return Mask(spec::Documents{{std::move(query_offsets)}, {std::move(key_offsets)}});
}

/// Keeps (i, j) where `allowed` is true. Broadcastable to [B, H, Lq, Lk]: [Lq, Lk], [B, 1, Lq, Lk],
/// [B, 1, 1, Lk], ... (the convention of F.scaled_dot_product_attention's boolean attn_mask).
inline Mask allow(Tensor<bool> allowed) { return Mask(spec::Dense{std::move(allowed), true}); }

/// Keeps (i, j) where `forbidden` is false (the nn.MultiheadAttention / TransformerEngine convention).
inline Mask forbid(Tensor<bool> forbidden) { return Mask(spec::Dense{std::move(forbidden), false}); }

/// Adds `bias` (broadcastable to [B, H, Lq, Lk]) to the scaled scores; entries equal to -inf cut
/// their edge. Differentiable when bias requires grad (its gradient is 0 on cut edges). The
/// element type must match the attention's.
inline Mask additive(Tensor<float> bias) { return Mask(spec::Additive{std::move(bias)}); }
inline Mask additive(Tensor<double> bias) { return Mask(spec::Additive{std::move(bias)}); }

/// Keeps (b, h, i, j) where keep(b, h, i, j). `classify`, when given, lets the kernel skip or
/// fast-path whole tiles without calling keep per element.
inline Mask custom(Predicate keep, TileClassifier classify = {}) {
  VEIL_CHECK(static_cast<bool>(keep), MaskError, "custom: the predicate must be callable, got an empty function");
  return Mask(spec::Custom{std::move(keep), std::move(classify)});
}

inline Mask operator&(const Mask& a, const Mask& b) {
  if (a.is_none()) return b;
  if (b.is_none()) return a;
  return Mask(spec::And{std::make_shared<const Mask>(a), std::make_shared<const Mask>(b)});
}

namespace detail {
inline bool has_additive(const Mask& mask) {
  return std::visit(
      [](const auto& s) {
        using S = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<S, spec::Additive>) return true;
        else if constexpr (std::is_same_v<S, spec::And> || std::is_same_v<S, spec::Or>)
          return has_additive(*s.a) || has_additive(*s.b);
        else return false;
      },
      mask.spec());
}
}  // namespace detail

inline Mask operator|(const Mask& a, const Mask& b) {
  // `none() | m` keeps every edge, but m's additive terms still add to the scores.
  if ((a.is_none() && !detail::has_additive(b)) || (b.is_none() && !detail::has_additive(a))) return none();
  return Mask(spec::Or{std::make_shared<const Mask>(a), std::make_shared<const Mask>(b)});
}

// ---- binding -----------------------------------------------------------------------------------

/// A mask bound to one attention call. All coordinates are absolute (b, h, query row, key).
template <class T>
class Bound {
 public:
  virtual ~Bound() = default;
  /// Kind of tile rows [q0, q1) × keys [k0, k1) of (b, h).
  virtual TileKind classify(Index b, Index h, Index q0, Index q1, Index k0, Index k1) const = 0;
  /// keep[r * ld + c] = 1 if edge (q0 + r, k0 + c) is kept, else 0.
  virtual void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const = 0;
  virtual bool has_bias() const { return false; }
  /// scores[r * ld + c] += bias of edge (q0 + r, k0 + c). Values on cut edges are irrelevant.
  virtual void add_bias(Index, Index, Index, Index, Index, Index, T*, Index) const {}
  /// True when classify() never answers `partial` for a tile that is in fact empty or full (the
  /// kernel then need not count the keep bytes of partial tiles).
  virtual bool classifies_exactly() const { return true; }
    /// The interval [lo, hi) of keys row i keeps, when this mask keeps one interval per row.
  virtual bool is_interval() const { return false; }
  virtual void row_interval(Index, Index, Index, Index& lo, Index& hi) const { lo = 0, hi = 0; }
};

namespace detail {

inline TileKind combine_and(TileKind a, TileKind b) {
  if (a == TileKind::empty || b == TileKind::empty) return TileKind::empty;
  if (a == TileKind::full && b == TileKind::full) return TileKind::full;
  return TileKind::partial;
}
inline TileKind combine_or(TileKind a, TileKind b) {
  if (a == TileKind::full || b == TileKind::full) return TileKind::full;
  if (a == TileKind::empty && b == TileKind::empty) return TileKind::empty;
  return TileKind::partial;
}

/// Masks that keep one interval of keys per query row.
template <class T>
class IntervalMask : public Bound<T> {
 public:
  bool is_interval() const override { return true; }
  TileKind classify(Index b, Index h, Index q0, Index q1, Index k0, Index k1) const override {
    bool all_full = true, any_kept = false;
    for (Index i = q0; i < q1; ++i) {
      Index lo, hi;
      this->row_interval(b, h, i, lo, hi);
      all_full = all_full && lo <= k0 && hi >= k1;
      any_kept = any_kept || std::max(lo, k0) < std::min(hi, k1);
    }
    return all_full ? TileKind::full : any_kept ? TileKind::partial : TileKind::empty;
  }
  void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const override {
    for (Index i = q0; i < q1; ++i) {
      Index lo, hi;
      this->row_interval(b, h, i, lo, hi);
      std::uint8_t* row = keep + (i - q0) * ld;
      const Index begin = std::clamp(lo, k0, k1) - k0, end = std::clamp(hi, k0, k1) - k0;
      std::fill(row, row + (k1 - k0), std::uint8_t{0});
      if (begin < end) std::fill(row + begin, row + end, std::uint8_t{1});
    }
  }
};

template <class T>
class BoundNone final : public IntervalMask<T> {
 public:
  explicit BoundNone(Index key_length) : key_length_(key_length) {}
  TileKind classify(Index, Index, Index, Index, Index, Index) const override { return TileKind::full; }
  void row_interval(Index, Index, Index, Index& lo, Index& hi) const override { lo = 0, hi = key_length_; }

 private:
  Index key_length_;
};

template <class T>
class BoundWindow final : public IntervalMask<T> {
 public:
  // Keeps shift + i - left <= j <= shift + i + right, clipped to [0, Lk).
  BoundWindow(Index shift, Index left, Index right, Index key_length)
      : shift_(shift), left_(left), right_(right), key_length_(key_length) {}
  void row_interval(Index, Index, Index i, Index& lo, Index& hi) const override {
    const Index center = i + shift_;
    lo = std::clamp<Index>(center - left_, 0, key_length_);
    hi = std::clamp<Index>(center + right_ + 1, 0, key_length_);
  }

 private:
  Index shift_, left_, right_, key_length_;
};

template <class T>
class BoundKeyPadding final : public IntervalMask<T> {
 public:
  explicit BoundKeyPadding(std::vector<Index> lengths) : lengths_(std::move(lengths)) {}
  void row_interval(Index b, Index, Index, Index& lo, Index& hi) const override { lo = 0, hi = lengths_[b]; }

 private:
  std::vector<Index> lengths_;
};

template <class T>
class BoundDocuments final : public IntervalMask<T> {
 public:
  BoundDocuments(std::vector<std::vector<Index>> key_begin, std::vector<std::vector<Index>> key_end)
      : key_begin_(std::move(key_begin)), key_end_(std::move(key_end)) {}
  void row_interval(Index b, Index, Index i, Index& lo, Index& hi) const override {
    const std::size_t row = key_begin_.size() == 1 ? 0 : static_cast<std::size_t>(b);
    lo = key_begin_[row][i], hi = key_end_[row][i];
  }

 private:
  std::vector<std::vector<Index>> key_begin_, key_end_;  // per batch row, per query: kept keys
};

template <class T>
class BoundIntervalAnd final : public IntervalMask<T> {
 public:
  BoundIntervalAnd(std::unique_ptr<Bound<T>> a, std::unique_ptr<Bound<T>> b) : a_(std::move(a)), b_(std::move(b)) {}
  void row_interval(Index b, Index h, Index i, Index& lo, Index& hi) const override {
    Index lo_a, hi_a, lo_b, hi_b;
    a_->row_interval(b, h, i, lo_a, hi_a);
    b_->row_interval(b, h, i, lo_b, hi_b);
    lo = std::max(lo_a, lo_b), hi = std::min(hi_a, hi_b);
  }

 private:
  std::unique_ptr<Bound<T>> a_, b_;
};

/// Broadcast view of a dense [.., Lq, Lk] tensor over [B, H, Lq, Lk], with a tile table.
template <class V>
struct DenseView {
  Tensor<V> values;
  Shape strides;                 // over [B, H, Lq, Lk]; 0 on broadcast dims
  Index table_b = 1, table_h = 1, tiles_q = 0, tiles_k = 0;
  Index tile_q = 1, tile_k = 1;
  std::vector<TileKind> table;   // [table_b, table_h, tiles_q, tiles_k]

  const V* at(Index b, Index h, Index i) const {
    return values.storage()->data() + values.offset() + b * strides[0] + h * strides[1] + i * strides[2];
  }
  TileKind lookup(Index b, Index h, Index q0, Index k0) const {
    const Index tb = table_b == 1 ? 0 : b, th = table_h == 1 ? 0 : h;
    return table[((tb * table_h + th) * tiles_q + q0 / tile_q) * tiles_k + k0 / tile_k];
  }
};

template <class V, class Keeps>
DenseView<V> make_dense_view(const Tensor<V>& values, const Geometry& g, const char* name, Keeps keeps) {
  const Shape full{g.batch, g.heads, g.query_length, g.key_length};
  VEIL_CHECK(values.dim() <= 4, MaskError, name, ": expected a tensor broadcastable to [B, H, Lq, Lk] = ",
             to_string(full), ", got rank ", values.dim(), " shape ", to_string(values.shape()));
  bool fits = true;
  for (Index d = 0; d < values.dim(); ++d) {
    const Index extent = values.shape()[d], target = full[4 - values.dim() + d];
    fits = fits && (extent == target || extent == 1);
  }
  VEIL_CHECK(fits, MaskError, name, ": shape ", to_string(values.shape()), " is not broadcastable to [B, H, Lq, Lk] = ",
             to_string(full));
  DenseView<V> view;
  view.values = values.detach();  // data only: a bound mask never holds autograd history
  view.strides = broadcast_strides(values.shape(), values.strides(), full);
  view.table_b = view.strides[0] == 0 ? 1 : g.batch;
  view.table_h = view.strides[1] == 0 ? 1 : g.heads;
  view.tile_q = g.tile_q, view.tile_k = g.tile_k;
  view.tiles_q = (g.query_length + g.tile_q - 1) / g.tile_q;
  view.tiles_k = (g.key_length + g.tile_k - 1) / g.tile_k;
  view.table.assign(static_cast<std::size_t>(view.table_b * view.table_h * view.tiles_q * view.tiles_k), TileKind::full);
  // One pass over the distinct mask entries: count kept edges per tile. An empty mask has no
  // entries, and no storage to point into (at() on it would offset a null pointer).
  std::vector<Index> kept(view.table.size(), 0);
  for (Index b = 0; b < view.table_b && values.numel() > 0; ++b)
    for (Index h = 0; h < view.table_h; ++h)
      for (Index i = 0; i < g.query_length; ++i) {
        const V* row = view.at(b, h, i);
        Index* counts = kept.data() + ((b * view.table_h + h) * view.tiles_q + i / g.tile_q) * view.tiles_k;
        for (Index j = 0; j < g.key_length; ++j) counts[j / g.tile_k] += keeps(row[j * view.strides[3]]) ? 1 : 0;
      }
  for (std::size_t t = 0; t < kept.size(); ++t) {
    const Index qt = static_cast<Index>(t / view.tiles_k) % view.tiles_q, kt = static_cast<Index>(t) % view.tiles_k;
    const Index rows = std::min(g.tile_q, g.query_length - qt * g.tile_q);
    const Index cols = std::min(g.tile_k, g.key_length - kt * g.tile_k);
    view.table[t] = kept[t] == 0 ? TileKind::empty : kept[t] == rows * cols ? TileKind::full : TileKind::partial;
  }
  return view;
}

template <class T>
class BoundDense final : public Bound<T> {
 public:
  BoundDense(DenseView<bool> view, bool keep_when) : view_(std::move(view)), keep_when_(keep_when) {}
  TileKind classify(Index b, Index h, Index q0, Index, Index k0, Index) const override {
    return view_.lookup(b, h, q0, k0);
  }
  void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const override {
    const Index stride = view_.strides[3];
    const bool keep_when = keep_when_;
    for (Index i = q0; i < q1; ++i) {
      const bool* row = view_.at(b, h, i) + k0 * stride;
      std::uint8_t* out = keep + (i - q0) * ld;
      // Locals, not members, in the loops: byte stores may alias them, which would block vectorising.
      if (stride == 1 && keep_when) {
        for (Index c = 0; c < k1 - k0; ++c) out[c] = row[c];
      } else {
        for (Index c = 0; c < k1 - k0; ++c) out[c] = row[c * stride] == keep_when;
      }
    }
  }

 private:
  DenseView<bool> view_;
  bool keep_when_;
};

template <class T>
class BoundAdditive final : public Bound<T> {
 public:
  explicit BoundAdditive(DenseView<T> view) : view_(std::move(view)) {}
  TileKind classify(Index b, Index h, Index q0, Index, Index k0, Index) const override {
    return view_.lookup(b, h, q0, k0);
  }
  void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const override {
    const Index stride = view_.strides[3];
    for (Index i = q0; i < q1; ++i) {
      const T* row = view_.at(b, h, i) + k0 * stride;
      std::uint8_t* out = keep + (i - q0) * ld;
      for (Index c = 0; c < k1 - k0; ++c) out[c] = row[c * stride] != -std::numeric_limits<T>::infinity();
    }
  }
  bool has_bias() const override { return true; }
  void add_bias(Index b, Index h, Index q0, Index q1, Index k0, Index k1, T* scores, Index ld) const override {
    for (Index i = q0; i < q1; ++i) {
      const T* row = view_.at(b, h, i);
      T* out = scores + (i - q0) * ld;
      for (Index j = k0; j < k1; ++j) out[j - k0] += row[j * view_.strides[3]];
    }
  }

 private:
  DenseView<T> view_;
};

template <class T>
class BoundCustom final : public Bound<T> {
 public:
  explicit BoundCustom(spec::Custom custom) : custom_(std::move(custom)) {}
  TileKind classify(Index b, Index h, Index q0, Index q1, Index k0, Index k1) const override {
    return custom_.classify ? custom_.classify(b, h, q0, q1, k0, k1) : TileKind::partial;
  }
  bool classifies_exactly() const override { return false; }  // a user classifier may be conservative
  void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const override {
    for (Index i = q0; i < q1; ++i)
      for (Index j = k0; j < k1; ++j) keep[(i - q0) * ld + (j - k0)] = custom_.keep(b, h, i, j) ? 1 : 0;
  }

 private:
  spec::Custom custom_;
};

template <class T>
class BoundCombination final : public Bound<T> {
 public:
  BoundCombination(std::unique_ptr<Bound<T>> a, std::unique_ptr<Bound<T>> b, bool is_and)
      : a_(std::move(a)), b_(std::move(b)), is_and_(is_and) {}
  TileKind classify(Index b, Index h, Index q0, Index q1, Index k0, Index k1) const override {
    const TileKind ka = a_->classify(b, h, q0, q1, k0, k1);
    if (is_and_ && ka == TileKind::empty) return TileKind::empty;
    if (!is_and_ && ka == TileKind::full) return TileKind::full;
    const TileKind kb = b_->classify(b, h, q0, q1, k0, k1);
    return is_and_ ? combine_and(ka, kb) : combine_or(ka, kb);
  }
  void fill(Index b, Index h, Index q0, Index q1, Index k0, Index k1, std::uint8_t* keep, Index ld) const override {
    a_->fill(b, h, q0, q1, k0, k1, keep, ld);
    std::vector<std::uint8_t> other(static_cast<std::size_t>((q1 - q0) * (k1 - k0)));
    b_->fill(b, h, q0, q1, k0, k1, other.data(), k1 - k0);
    for (Index r = 0; r < q1 - q0; ++r)
      for (Index c = 0; c < k1 - k0; ++c) {
        std::uint8_t& out = keep[r * ld + c];
        const std::uint8_t in = other[r * (k1 - k0) + c];
        out = is_and_ ? (out & in) : (out | in);
      }
  }
  bool has_bias() const override { return a_->has_bias() || b_->has_bias(); }
  bool classifies_exactly() const override { return false; }  // two partial tiles may combine to empty or full
  void add_bias(Index b, Index h, Index q0, Index q1, Index k0, Index k1, T* scores, Index ld) const override {
    if (a_->has_bias()) a_->add_bias(b, h, q0, q1, k0, k1, scores, ld);
    if (b_->has_bias()) b_->add_bias(b, h, q0, q1, k0, k1, scores, ld);
  }

 private:
  std::unique_ptr<Bound<T>> a_, b_;
  bool is_and_;
};

/// Per-query kept-key intervals for documents, validated against Lq and Lk.
inline void document_intervals(const spec::Documents& docs, const Geometry& g, std::vector<std::vector<Index>>& begin,
                               std::vector<std::vector<Index>>& end) {
  const std::size_t rows = docs.query_offsets.size();
  VEIL_CHECK(rows == 1 || static_cast<Index>(rows) == g.batch, MaskError, "documents: packings are given for ", rows,
             " batch rows but the batch size is ", g.batch, "; expected 1 (shared) or ", g.batch);
  for (std::size_t r = 0; r < rows; ++r) {
    const auto& q = docs.query_offsets[r];
    const auto& k = docs.key_offsets[r];
    VEIL_CHECK(q.back() == g.query_length, MaskError, "documents: the sequences of batch row ", r, " cover ", q.back(),
               " query positions but the query length is ", g.query_length, "; lengths must sum to it");
    VEIL_CHECK(k.back() == g.key_length, MaskError, "documents: the sequences of batch row ", r, " cover ", k.back(),
               " key positions but the key length is ", g.key_length, "; lengths must sum to it");
    std::vector<Index> lo(static_cast<std::size_t>(g.query_length)), hi(lo.size());
    for (std::size_t d = 0; d + 1 < q.size(); ++d)
      for (Index i = q[d]; i < q[d + 1]; ++i) lo[i] = k[d], hi[i] = k[d + 1];
    begin.push_back(std::move(lo));
    end.push_back(std::move(hi));
  }
}

}  // namespace detail

/// Validates `mask` against the call's geometry (throws MaskError) and prepares it for the kernel.
template <class T>
std::unique_ptr<Bound<T>> bind(const Mask& mask, const Geometry& g) {
  return std::visit(
      [&](const auto& s) -> std::unique_ptr<Bound<T>> {
        using S = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<S, spec::None>) {
          return std::make_unique<detail::BoundNone<T>>(g.key_length);
        } else if constexpr (std::is_same_v<S, spec::Causal>) {
          const Index shift = s.bottom_right ? g.key_length - g.query_length : 0;
          return std::make_unique<detail::BoundWindow<T>>(shift, unbounded, 0, g.key_length);
        } else if constexpr (std::is_same_v<S, spec::SlidingWindow>) {
          return std::make_unique<detail::BoundWindow<T>>(g.key_length - g.query_length, s.left, s.right, g.key_length);
        } else if constexpr (std::is_same_v<S, spec::KeyPadding>) {
          VEIL_CHECK(static_cast<Index>(s.lengths.size()) == g.batch, MaskError, "key_padding: lengths has ",
                     s.lengths.size(), " entries but the batch size is ", g.batch);
          for (std::size_t b = 0; b < s.lengths.size(); ++b)
            VEIL_CHECK(s.lengths[b] <= g.key_length, MaskError, "key_padding: lengths[", b, "] = ", s.lengths[b],
                       " is out of range [0, ", g.key_length, "] (the key length)");
          return std::make_unique<detail::BoundKeyPadding<T>>(s.lengths);
        } else if constexpr (std::is_same_v<S, spec::Documents>) {
          std::vector<std::vector<Index>> begin, end;
          detail::document_intervals(s, g, begin, end);
          return std::make_unique<detail::BoundDocuments<T>>(std::move(begin), std::move(end));
        } else if constexpr (std::is_same_v<S, spec::Dense>) {
          VEIL_CHECK(s.values.defined(), MaskError, s.keep_when ? "allow" : "forbid", ": the mask tensor is undefined");
          const bool keep_when = s.keep_when;
          return std::make_unique<detail::BoundDense<T>>(
              detail::make_dense_view<bool>(s.values, g, keep_when ? "allow" : "forbid",
                                            [keep_when](bool v) { return v == keep_when; }),
              keep_when);
        } else if constexpr (std::is_same_v<S, spec::Additive>) {
          VEIL_CHECK(std::holds_alternative<Tensor<T>>(s.bias), MaskError, "additive: the bias is ",
                     std::holds_alternative<Tensor<float>>(s.bias) ? "float" : "double", " but the attention runs in ",
                     std::is_same_v<T, float> ? "float" : "double", "; expected the same element type");
          const Tensor<T>& bias = std::get<Tensor<T>>(s.bias);
          VEIL_CHECK(bias.defined(), MaskError, "additive: the bias tensor is undefined");
          return std::make_unique<detail::BoundAdditive<T>>(detail::make_dense_view<T>(
              bias, g, "additive", [](T v) { return v != -std::numeric_limits<T>::infinity(); }));
        } else if constexpr (std::is_same_v<S, spec::Custom>) {
          return std::make_unique<detail::BoundCustom<T>>(s);
        } else {
          auto a = bind<T>(*s.a, g);
          auto b = bind<T>(*s.b, g);
          constexpr bool is_and = std::is_same_v<S, spec::And>;
          if (is_and && a->is_interval() && b->is_interval())
            return std::make_unique<detail::BoundIntervalAnd<T>>(std::move(a), std::move(b));
          return std::make_unique<detail::BoundCombination<T>>(std::move(a), std::move(b), is_and);
        }
      },
      mask.spec());
}

/// The additive bias tensors of a mask, in tree order (the attention op differentiates them).
template <class T>
void collect_additive(const Mask& mask, std::vector<Tensor<T>>& out) {
  std::visit(
      [&](const auto& s) {
        using S = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<S, spec::Additive>) {
          if (std::holds_alternative<Tensor<T>>(s.bias)) out.push_back(std::get<Tensor<T>>(s.bias));
        } else if constexpr (std::is_same_v<S, spec::And> || std::is_same_v<S, spec::Or>) {
          collect_additive<T>(*s.a, out);
          collect_additive<T>(*s.b, out);
        }
      },
      mask.spec());
}

/// The keep pattern of `mask` as a dense [B, H, Lq, Lk] bool tensor: for tests, pictures and the
/// reference path; the fused kernel never builds it.
template <class T = float>
Tensor<bool> materialize(const Mask& mask, Index batch, Index heads, Index query_length, Index key_length) {
  const Geometry g{batch, heads, query_length, key_length, std::max<Index>(query_length, 1), std::max<Index>(key_length, 1)};
  auto bound = bind<T>(mask, g);
  Tensor<bool> keep = Tensor<bool>::empty({batch, heads, query_length, key_length});
  std::vector<std::uint8_t> tile(static_cast<std::size_t>(query_length * key_length));
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h) {
      if (query_length == 0 || key_length == 0) continue;
      bound->fill(b, h, 0, query_length, 0, key_length, tile.data(), key_length);
      bool* out = keep.data() + (b * heads + h) * query_length * key_length;
      for (std::size_t e = 0; e < tile.size(); ++e) out[e] = tile[e] != 0;
    }
  return keep;
}

}  // namespace veil::mask

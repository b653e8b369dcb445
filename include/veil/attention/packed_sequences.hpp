// PackedSequences: everything packed language-model training needs, derived from one list of
// document lengths so the pieces cannot disagree.
//
// Packing concatenates several documents into one row of L tokens so no compute is spent on
// padding. Three things must then respect the document boundaries, and libraries routinely get at
// least one of them wrong:
//   * the attention mask must be block-diagonal AND causal (documents & causal), not just causal,
//     or tokens attend into the previous document;
//   * position ids must restart at 0 in every document, or positional encodings (learned, RoPE)
//     see a document as the continuation of the one before it;
//   * the loss must skip the last token of every document, whose "next token" is the first token
//     of the NEXT document: predicting it teaches the model a boundary that does not exist.
// Building all three from the same lengths (and the same cu_seqlens) removes the chance of a
// mismatch. The conventions are those of flash-attention's varlen API (cu_seqlens) and of
// PyTorch's cross_entropy (ignore_index).
//
//   auto packing = veil::attention::PackedSequences::from_lengths({5, 3, 8});   // L = 16
//   auto y = mha(x, packing.mask());                        // documents({5, 3, 8}) & causal()
//   auto pos = packing.position_ids();                      // [1, 16]: 0..4, 0..2, 0..7
//   auto targets = packing.targets(tokens);                 // tokens [B, 17] or [B, 16]
//   auto loss = veil::cross_entropy(logits, targets);       // ignore_index -100 at boundaries
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "veil/attention/mask.hpp"
#include "veil/tensor.hpp"

namespace veil::attention {

class PackedSequences {
 public:
  /// One packing shared by every batch row: documents of these lengths, in order, fill a row of
  /// L = sum(lengths) tokens. Tensors it returns have batch extent 1 (they broadcast) and its mask
  /// fits any batch size. Throws MaskError on a negative length, no lengths, or L == 0.
  static PackedSequences from_lengths(const std::vector<Index>& lengths) {
    return PackedSequences({lengths}, /*shared=*/true);
  }

  /// A packing per batch row: lengths_per_row[b] for row b; every row must sum to the same L.
  /// Zero-length documents are allowed (they hold no token), as in mask::documents.
  static PackedSequences from_lengths(const std::vector<std::vector<Index>>& lengths_per_row) {
    return PackedSequences(lengths_per_row, /*shared=*/false);
  }

  /// Rows described (1 for a shared packing), and tokens per row (L).
  Index rows() const { return static_cast<Index>(offsets_.size()); }
  Index length() const { return length_; }
  bool shared() const { return shared_; }
  const std::vector<Index>& lengths(Index row = 0) const { return lengths_[checked_row(row, "lengths")]; }

  /// cu_seqlens of one row: [0, l0, l0 + l1, ..., L] (documents_from_offsets takes the same list).
  const std::vector<Index>& offsets(Index row = 0) const { return offsets_[checked_row(row, "offsets")]; }

  /// cu_seqlens over all rows laid end to end (row b's tokens start at b·L), as flash-attention's
  /// varlen functions take them for the flattened [rows·L] token stream.
  std::vector<Index> cu_seqlens() const {
    std::vector<Index> out{0};
    for (std::size_t r = 0; r < offsets_.size(); ++r)
      for (std::size_t d = 1; d < offsets_[r].size(); ++d)
        out.push_back(static_cast<Index>(r) * length_ + offsets_[r][d]);
    return out;
  }

  /// documents(lengths) & causal(): each token attends to itself and the earlier tokens of its
  /// own document. mask(false) drops the causal part (bidirectional within each document).
  mask::Mask mask(bool causal = true) const {
    const mask::Mask blocks = shared_ ? mask::documents(lengths_[0]) : mask::documents(lengths_);
    return causal ? blocks & mask::causal() : blocks;
  }

  /// [rows, L] int64: the position of each token inside its document, restarting at 0.
  Tensor<std::int64_t> position_ids() const {
    Tensor<std::int64_t> out = Tensor<std::int64_t>::empty({rows(), length_});
    for (Index r = 0; r < rows(); ++r) {
      const auto& offsets = offsets_[static_cast<std::size_t>(r)];
      for (std::size_t d = 0; d + 1 < offsets.size(); ++d)
        for (Index t = offsets[d]; t < offsets[d + 1]; ++t) out.data()[r * length_ + t] = t - offsets[d];
    }
    return out;
  }

  /// [rows, L] bool: true where the next token belongs to the same document, so a next-token loss
  /// is meaningful; false at the last token of every document (including the row's last token).
  Tensor<bool> loss_mask() const {
    Tensor<bool> out = full<bool>({rows(), length_}, true);
    for (Index r = 0; r < rows(); ++r) {
      const auto& offsets = offsets_[static_cast<std::size_t>(r)];
      for (std::size_t d = 1; d < offsets.size(); ++d)
        if (offsets[d] > offsets[d - 1]) out.data()[r * length_ + offsets[d] - 1] = false;
    }
    return out;
  }

  /// Next-token targets for cross_entropy: targets[b, t] = tokens[b, t + 1] where loss_mask() is
  /// true, ignore_index where it is false. `tokens` is [B, L + 1] (the usual x = chunk[:-1],
  /// y = chunk[1:] data loader chunk) or [B, L]; the row's last token always ends a document, so
  /// the extra token of the [B, L + 1] form is never a target. B must equal rows(), or be any
  /// batch size when the packing is shared. Returns [B, L].
  Tensor<std::int64_t> targets(const Tensor<std::int64_t>& tokens, std::int64_t ignore_index = -100) const {
    VEIL_CHECK(tokens.defined() && tokens.dim() == 2, ShapeError, "PackedSequences::targets: tokens must be [B, ",
               length_ + 1, "] or [B, ", length_, "], got ",
               tokens.defined() ? to_string(tokens.shape()) : std::string("an undefined tensor"));
    const Index batch = tokens.size(0), columns = tokens.size(1);
    VEIL_CHECK(columns == length_ + 1 || columns == length_, ShapeError, "PackedSequences::targets: tokens must have ",
               length_ + 1, " or ", length_, " columns (L + 1 or L, L = ", length_, "), got shape ",
               to_string(tokens.shape()));
    VEIL_CHECK(shared_ || batch == rows(), ShapeError, "PackedSequences::targets: the packing describes ", rows(),
               " batch rows but tokens has ", batch, " (shape ", to_string(tokens.shape()), ")");
    const Tensor<std::int64_t> plain = veil::detail::copy_contiguous(tokens);
    const Tensor<bool> keep = loss_mask();
    Tensor<std::int64_t> out = Tensor<std::int64_t>::empty({batch, length_});
    for (Index b = 0; b < batch; ++b) {
      const bool* row_keep = keep.data() + (shared_ ? 0 : b) * length_;
      for (Index t = 0; t < length_; ++t)
        out.data()[b * length_ + t] = row_keep[t] ? plain.data()[b * columns + t + 1] : ignore_index;
    }
    return out;
  }

 private:
  PackedSequences(const std::vector<std::vector<Index>>& lengths_per_row, bool shared)
      : lengths_(lengths_per_row), shared_(shared) {
    VEIL_CHECK(!lengths_per_row.empty(), MaskError,
               "PackedSequences::from_lengths: expected lengths for at least one batch row, got none");
    for (std::size_t r = 0; r < lengths_per_row.size(); ++r) {
      const auto& lengths = lengths_per_row[r];
      VEIL_CHECK(!lengths.empty(), MaskError, "PackedSequences::from_lengths: expected at least one document length",
                 shared ? "" : " in row ", shared ? "" : std::to_string(r), ", got none");
      std::vector<Index> offsets{0};
      for (std::size_t d = 0; d < lengths.size(); ++d) {
        VEIL_CHECK(lengths[d] >= 0, MaskError, "PackedSequences::from_lengths: document lengths must be >= 0, got ",
                   shared ? "" : "row " + std::to_string(r) + " ", "lengths[", d, "] = ", lengths[d]);
        VEIL_CHECK(lengths[d] <= std::numeric_limits<Index>::max() - offsets.back(), MaskError,
                   "PackedSequences::from_lengths: document lengths must sum to at most ",
                   std::numeric_limits<Index>::max(), ", got ", shared ? "" : "row " + std::to_string(r) + " ",
                   "lengths[", d, "] = ", lengths[d], " after a sum of ", offsets.back());
        offsets.push_back(offsets.back() + lengths[d]);
      }
      if (r == 0) length_ = offsets.back();
      VEIL_CHECK(offsets.back() == length_, MaskError, "PackedSequences::from_lengths: every row must hold the same ",
                 "number of tokens; row 0 sums to ", length_, " but row ", r, " sums to ", offsets.back());
      offsets_.push_back(std::move(offsets));
    }
    VEIL_CHECK(length_ > 0, MaskError,
               "PackedSequences::from_lengths: the documents must hold at least one token, got lengths summing to 0");
  }

  std::size_t checked_row(Index row, const char* accessor) const {
    VEIL_CHECK(row >= 0 && row < rows(), ValueError, "PackedSequences::", accessor, ": row must be in [0, ", rows(),
               "), got ", row);
    return static_cast<std::size_t>(row);
  }

  std::vector<std::vector<Index>> lengths_;
  std::vector<std::vector<Index>> offsets_;  // per row: cu_seqlens
  Index length_ = 0;                         // L, tokens per row
  bool shared_ = false;
};

}  // namespace veil::attention

// The attention benchmark grid, shared by attention_bench (veil's fused and reference paths) and
// libtorch_bench (the same cases in libtorch), so both programs time identical shapes and masks
// and the report can join them by name.
//
// A case is named  <pass>/<mask>/B<b>xH<h>/L<l>/D<d>  (or Lq<q>xLk<k> when the lengths differ),
// and each program prefixes it with its implementation: "attention/fused/...",
// "attention/reference/...", "attention/libtorch/...".
#pragma once

#include <veil/attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace bench {

using veil::Index;

enum class MaskKind {
  none,
  causal,
  key_padding_75,          // every batch row keeps its first 75% of the keys
  sliding_window_256,      // causal local attention over the last 257 keys (Mistral-style)
  documents_random_causal, // packed documents of seeded random lengths, causal within each
  documents_4_causal,      // 4 equal documents, causal within each
  documents_8_causal,      // 8 equal documents, causal within each (the libtorch comparison's case)
  prefix_25,               // prefix LM: the first 25% of the keys are visible to every query, causal after
  allow_random_50,         // a dense random mask keeping 50% of the pairs: no tile can be skipped
  fully_masked_rows,       // causal, and every 4th query row has no key at all
};

inline const std::vector<MaskKind>& all_mask_kinds() {
  static const std::vector<MaskKind> kinds{MaskKind::none,
                                           MaskKind::causal,
                                           MaskKind::key_padding_75,
                                           MaskKind::sliding_window_256,
                                           MaskKind::documents_random_causal,
                                           MaskKind::documents_4_causal,
                                           MaskKind::documents_8_causal,
                                           MaskKind::prefix_25,
                                           MaskKind::allow_random_50,
                                           MaskKind::fully_masked_rows};
  return kinds;
}

inline std::string mask_name(MaskKind kind) {
  switch (kind) {
    case MaskKind::none: return "none";
    case MaskKind::causal: return "causal";
    case MaskKind::key_padding_75: return "key_padding_75";
    case MaskKind::sliding_window_256: return "sliding_window_256";
    case MaskKind::documents_random_causal: return "documents_random&causal";
    case MaskKind::documents_4_causal: return "documents_4&causal";
    case MaskKind::documents_8_causal: return "documents_8&causal";
    case MaskKind::prefix_25: return "prefix_25";
    case MaskKind::allow_random_50: return "allow_random_50";
    case MaskKind::fully_masked_rows: return "fully_masked_rows";
  }
  return "?";
}

struct AttentionCase {
  MaskKind mask = MaskKind::none;
  Index batch = 4, heads = 8, query_length = 2048, key_length = 2048, head_dim = 64;
  bool backward = true;  // forward+backward, or forward alone
  bool fused_only = false;  // too large for any materialised path

  std::string name() const {
    // Appended piece by piece: GCC 12 misreports `"literal" + std::string` chains (-Wrestrict).
    std::string name = backward ? "fwd_bwd/" : "fwd/";
    name += mask_name(mask);
    name += "/B" + std::to_string(batch);
    name += "xH" + std::to_string(heads);
    if (query_length == key_length) name += "/L" + std::to_string(query_length);
    else name += "/Lq" + std::to_string(query_length) + "xLk" + std::to_string(key_length);
    name += "/D" + std::to_string(head_dim);
    return name;
  }
  /// Dense FLOPs: QKᵀ and PV are 2·Lq·Lk·D each per (b, h); backward adds dV, dP, dQ, dK (and
  /// the recomputed QKᵀ of the flash backward is not counted: the same count for every path).
  double dense_flops() const {
    const double forward = 4.0 * batch * heads * query_length * key_length * head_dim;
    return backward ? 3.5 * forward : forward;
  }
  /// Bytes of one materialised [B, H, Lq, Lk] float tensor; the reference path keeps several.
  double score_bytes() const { return 4.0 * batch * heads * query_length * key_length; }
  /// Why a materialised path holding `score_tensors` such tensors skips this case within
  /// `budget` bytes, or "" when it fits.
  std::string skip_reason(double score_tensors, double budget) const {
    const double needed = score_bytes() * score_tensors;
    if (needed <= budget) return "";
    return "needs " + std::to_string(static_cast<int>(std::ceil(needed / (1 << 30)))) + " GiB for materialised scores";
  }
};

/// Seeded random document lengths covering `length` exactly (between length/16 and length/4 each,
/// the last one takes the rest): the same packing in every program.
inline std::vector<Index> random_document_lengths(Index length) {
  std::mt19937_64 rng(20241122);
  const Index shortest = std::max<Index>(1, length / 16), spread = std::max<Index>(1, length / 4 - shortest);
  std::vector<Index> lengths;
  for (Index covered = 0; covered < length;) {
    const Index next = std::min<Index>(length - covered, shortest + static_cast<Index>(rng() % spread));
    lengths.push_back(next);
    covered += next;
  }
  return lengths;
}

/// The typed mask of a case. Dense masks are [Lq, Lk], shared by every (b, h).
inline veil::mask::Mask make_mask(const AttentionCase& c) {
  namespace mask = veil::mask;
  const Index Lq = c.query_length, Lk = c.key_length;
  switch (c.mask) {
    case MaskKind::none: return mask::none();
    case MaskKind::causal: return mask::causal();
    case MaskKind::key_padding_75: return mask::key_padding(std::vector<Index>(c.batch, Lk * 3 / 4));
    case MaskKind::sliding_window_256: return mask::sliding_window(256, 0);
    case MaskKind::documents_random_causal: return mask::documents(random_document_lengths(Lk)) & mask::causal();
    case MaskKind::documents_4_causal: return mask::documents(std::vector<Index>(4, Lk / 4)) & mask::causal();
    case MaskKind::documents_8_causal: return mask::documents(std::vector<Index>(8, Lk / 8)) & mask::causal();
    case MaskKind::prefix_25: return mask::key_padding(std::vector<Index>(c.batch, Lk / 4)) | mask::causal();
    case MaskKind::allow_random_50: {
      std::mt19937_64 rng(7);
      veil::Tensor<bool> allowed = veil::Tensor<bool>::empty({Lq, Lk});
      for (Index e = 0; e < Lq * Lk; ++e) allowed.data()[e] = (rng() & 1) != 0;
      return mask::allow(allowed);
    }
    case MaskKind::fully_masked_rows: {
      veil::Tensor<bool> allowed = veil::Tensor<bool>::empty({Lq, Lk});
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j) allowed.data()[i * Lk + j] = i % 4 != 0 && j <= i + (Lk - Lq);
      return mask::allow(allowed);
    }
  }
  return mask::none();
}

/// Fraction of the B·H·Lq·Lk pairs the mask keeps (for the effective GFLOP/s counter).
inline double kept_fraction(const AttentionCase& c) {
  const veil::Tensor<bool> keep = veil::mask::materialize(make_mask(c), c.batch, 1, c.query_length, c.key_length);
  return static_cast<double>(std::count(keep.data(), keep.data() + keep.numel(), true)) /
         static_cast<double>(keep.numel());
}

/// Takes --grid=quick (the default) or --grid=full out of the command line, before Google
/// Benchmark parses the rest; true for full.
inline bool take_grid_flag(int& argc, char** argv) {
  bool full = false;
  int kept = 0;
  for (int a = 0; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--grid=full") full = true;
    else if (arg != "--grid=quick") argv[kept++] = argv[a];
  }
  argc = kept;
  return full;
}

/// The grid. quick: the cases behind the README's speed claims plus a short sweep over L (a few
/// minutes on 2 cores). full: every mask × L ∈ {512 … 8192} × D ∈ {64, 128} × B·H ∈ {1, 32} ×
/// {fwd, fwd_bwd}, L = 16384 fused-only, and decoding (Lq = 1 against Lk = 4096).
inline std::vector<AttentionCase> attention_cases(bool full) {
  std::vector<AttentionCase> cases;
  auto add = [&](MaskKind mask, Index batch, Index heads, Index lq, Index lk, Index d, bool backward,
                 bool fused_only = false) {
    cases.push_back(AttentionCase{mask, batch, heads, lq, lk, d, backward, fused_only});
  };
  if (!full) {
    for (bool backward : {false, true})
      for (MaskKind mask : all_mask_kinds()) add(mask, 4, 8, 2048, 2048, 64, backward);
    for (Index length : {512, 1024, 4096})
      for (MaskKind mask : {MaskKind::none, MaskKind::causal, MaskKind::sliding_window_256,
                            MaskKind::documents_random_causal})
        add(mask, 4, 8, length, length, 64, true);
    add(MaskKind::causal, 4, 8, 2048, 2048, 128, true);
    add(MaskKind::causal, 1, 4, 8192, 8192, 64, true);  // the memory comparison with libtorch
    add(MaskKind::causal, 1, 8, 16384, 16384, 64, true, true);
    add(MaskKind::none, 4, 8, 1, 4096, 64, false);
    return cases;
  }
  for (bool backward : {false, true})
    for (Index bh : {1, 32})
      for (Index d : {64, 128})
        for (MaskKind mask : all_mask_kinds()) {
          const Index batch = bh == 1 ? 1 : 4, heads = bh == 1 ? 1 : 8;
          for (Index length : {512, 1024, 2048, 4096, 8192}) add(mask, batch, heads, length, length, d, backward);
          add(mask, batch, heads, 16384, 16384, d, backward, true);
          if (mask == MaskKind::none || mask == MaskKind::key_padding_75 || mask == MaskKind::sliding_window_256)
            add(mask, batch, heads, 1, 4096, d, backward);
        }
  return cases;
}

}  // namespace bench

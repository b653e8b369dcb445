// Differential test: the fused kernel against the unfused reference, over a seeded random grid.
//
// Every case runs three ways: fused float32, reference float32 ("naive32") and reference float64
// ("ref64", the golden value). The fused kernel must be at least roughly as accurate as the naive
// float32 computation (flash-attention's rule, reliability notes B4/B5):
//   output, logsumexp:        max|fused - ref64| <= 2 * max|naive32 - ref64| + 1e-5
//   dq, dk, dv, d(bias):      max|fused - ref64| <= 3 * max|naive32 - ref64| + floor
// where floor = 1e-5 * max(1, max|ref64|) for gradients: a gradient such as dk sums up to Lq·G
// terms of size |ds|·|q| and can reach magnitudes of 10-100, where one float32 ulp alone is
// ~1e-6..1e-5; scaling the absolute floor by the tensor's magnitude keeps the rule a relative one
// there, and is exactly 1e-5 for unit-sized tensors. Each gradient entry is also a sum of R
// per-edge terms (dq: Lk, dk and dv: G·Lq, d(bias): B·H·Lq·Lk / numel(bias)), and the fused
// kernel forms dS = P∘(dP − δ) with δ = rowsum(dO∘O) while the naive path differentiates softmax
// directly, so the per-edge rounding differs even where the exact dS is 0 (Lk = 1: P = 1 and
// dS = 0, which the naive path happens to reproduce exactly, so its error term is 0).
// Independent per-term rounding grows like sqrt(R), so the gradient floor is multiplied by
// sqrt(max(1, R / 16)) (1 up to 16 terms, ~4 at Lq = 257); d(bias) also allows the rounding left
// where dS cancels exactly (see run_case). Positions that are ±inf or NaN in ref64 must
// hold the same value in the fused result.
//
// The seed is printed and can be overridden with VEIL_ATTENTION_SEED; VEIL_TEST_SCALE (default 1)
// multiplies the number of cases (2,000 by default).
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using veil::Index;
using veil::Shape;
using veil::Tensor;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

std::uint64_t seed_from_env() {
  if (const char* text = std::getenv("VEIL_ATTENTION_SEED")) return std::strtoull(text, nullptr, 0);
  return 20240611;
}

double scale_from_env() {
  if (const char* text = std::getenv("VEIL_TEST_SCALE")) {
    const double scale = std::strtod(text, nullptr);
    if (scale > 0) return scale;
  }
  return 1.0;
}

std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (std::size_t d = 0; d < shape.size(); ++d) out << (d ? ", " : "") << shape[d];
  out << "]";
  return out.str();
}

template <class V>
std::string list_string(const std::vector<V>& values) {
  std::ostringstream out;
  out << "{";
  for (std::size_t d = 0; d < values.size(); ++d) out << (d ? ", " : "") << values[d];
  out << "}";
  return out.str();
}

enum Kind {
  none,
  causal,
  causal_top_left,
  sliding_window,
  key_padding,
  documents_shared,
  documents_per_row,
  documents_offsets,
  documents_cross,
  allow,
  forbid,
  additive,
  custom,
  custom_classified,
  documents_and_causal,
  key_padding_and_causal,
  causal_and_window,
  allow_and_additive,
  prefix_lm,
  forbid_or_window_and_additive,
  kind_count
};

const char* kind_name(int kind) {
  static const char* names[] = {"none()",
                                "causal()",
                                "causal_top_left()",
                                "sliding_window(l, r)",
                                "key_padding(lengths)",
                                "documents(lengths)",
                                "documents(per-row lengths)",
                                "documents_from_offsets(offsets)",
                                "documents_from_offsets(q_offsets, k_offsets)",
                                "allow(t)",
                                "forbid(t)",
                                "additive(bias)",
                                "custom(fn)",
                                "custom(fn, classifier)",
                                "documents(lengths) & causal()",
                                "key_padding(lengths) & causal()",
                                "causal() & sliding_window(l, r)",
                                "allow(t) & additive(bias)",
                                "causal() | key_padding(prefix)",
                                "(forbid(t) | sliding_window(l, r)) & additive(bias)"};
  return names[kind];
}

/// A random attention case; masks are rebuilt from it for each element type.
struct Case {
  int kind = none;
  Index B = 1, H = 1, Hkv = 1, Lq = 1, Lk = 1, D = 1, Dv = 1;
  std::vector<Index> lengths;                   // key_padding / prefix lengths per batch row
  std::vector<std::vector<Index>> doc_lengths;  // documents(lengths) (one row) or per row
  std::vector<Index> q_offsets, k_offsets;      // documents_from_offsets
  Index left = 0, right = 0;                    // sliding window
  Shape dense_shape;                            // allow / forbid
  std::vector<char> dense_values;
  Shape bias_shape;  // additive
  std::vector<double> bias_values;
  std::uint64_t data_seed = 0;

  std::string describe() const {
    std::ostringstream out;
    out << kind_name(kind) << " B=" << B << " H=" << H << " Hkv=" << Hkv << " Lq=" << Lq << " Lk=" << Lk << " D=" << D
        << " Dv=" << Dv << " data_seed=" << data_seed;
    if (!lengths.empty()) out << " lengths=" << list_string(lengths);
    for (const auto& row : doc_lengths) out << " doc_lengths=" << list_string(row);
    if (!q_offsets.empty()) out << " q_offsets=" << list_string(q_offsets) << " k_offsets=" << list_string(k_offsets);
    if (kind == sliding_window || kind == causal_and_window || kind == forbid_or_window_and_additive)
      out << " window=(" << left << ", " << right << ")";
    if (!dense_shape.empty()) out << " dense_shape=" << shape_string(dense_shape);
    if (!bias_shape.empty()) out << " bias_shape=" << shape_string(bias_shape);
    return out.str();
  }
};

bool uses_dense(int kind) { return kind == allow || kind == forbid || kind == allow_and_additive || kind == forbid_or_window_and_additive; }
bool uses_bias(int kind) { return kind == additive || kind == allow_and_additive || kind == forbid_or_window_and_additive; }
bool needs_equal_lengths(int kind) {
  return kind == documents_shared || kind == documents_per_row || kind == documents_offsets || kind == documents_and_causal;
}

/// Splits `total` into `parts` non-negative lengths (some of them zero now and then).
std::vector<Index> random_split(std::mt19937_64& rng, Index total, Index parts) {
  std::vector<Index> cuts{0, total};
  for (Index p = 1; p < parts; ++p) cuts.push_back(static_cast<Index>(rng() % static_cast<std::uint64_t>(total + 1)));
  std::sort(cuts.begin(), cuts.end());
  std::vector<Index> lengths;
  for (std::size_t c = 1; c < cuts.size(); ++c) lengths.push_back(cuts[c] - cuts[c - 1]);
  return lengths;
}

std::vector<Index> offsets_of(const std::vector<Index>& lengths) {
  std::vector<Index> offsets{0};
  for (Index length : lengths) offsets.push_back(offsets.back() + length);
  return offsets;
}

/// A shape broadcastable to [B, H, Lq, Lk]: a random choice of the size-1 dimensions and rank.
Shape random_broadcast_shape(std::mt19937_64& rng, const Case& c) {
  const Shape full{c.B, c.H, c.Lq, c.Lk};
  const int rank = 2 + static_cast<int>(rng() % 3);  // 2, 3 or 4
  Shape shape;
  for (int d = 4 - rank; d < 4; ++d) shape.push_back(rng() % 3 == 0 ? 1 : full[d]);
  shape.back() = rng() % 6 == 0 ? 1 : c.Lk;
  return shape;
}

Index numel_of_shape(const Shape& shape) {
  Index n = 1;
  for (Index e : shape) n *= e;
  return n;
}

Case random_case(std::mt19937_64& rng, int kind, bool large) {
  auto pick = [&](const std::vector<Index>& from) { return from[rng() % from.size()]; };
  const std::vector<Index> small_lengths{1, 2, 17, 31, 33, 63, 64, 65};
  const std::vector<Index> all_lengths{1, 2, 17, 33, 63, 64, 65, 127, 128, 129, 257};
  const std::vector<Index> large_lengths{127, 128, 129, 257};
  Case c;
  c.kind = kind;
  c.data_seed = rng();
  if (large) {
    c.D = pick({1, 3, 8, 31, 64, 65, 128});
    c.B = 1;
    c.Hkv = 1;
    c.H = pick({1, 2});
    c.Lq = pick(large_lengths);
    c.Lk = pick(all_lengths);
    if (rng() % 2) std::swap(c.Lq, c.Lk);
  } else {
    c.D = rng() % 6 == 0 ? pick({64, 65, 128}) : pick({1, 3, 8, 31});
    c.B = 1 + static_cast<Index>(rng() % 3);
    c.Hkv = 1 + static_cast<Index>(rng() % 2);
    c.H = c.Hkv * pick({1, 2, 4});
    c.Lq = pick(small_lengths);
    c.Lk = rng() % 4 == 0 ? c.Lq : pick(small_lengths);
    if (c.D >= 64) c.B = 1, c.Hkv = 1, c.H = pick({1, 2, 4});  // keep the wide-head cases cheap
  }
  c.Dv = rng() % 3 == 0 ? pick({1, 5, 8, 33}) : c.D;
  if (needs_equal_lengths(kind)) c.Lk = c.Lq;

  switch (kind) {
    case sliding_window:
    case causal_and_window:
    case forbid_or_window_and_additive:
      c.left = pick({0, 1, 5, 20, 70, mask::unbounded});
      c.right = pick({0, 0, 3, 40, mask::unbounded});
      break;
    case key_padding:
    case key_padding_and_causal:
    case prefix_lm:
      for (Index b = 0; b < c.B; ++b) c.lengths.push_back(static_cast<Index>(rng() % static_cast<std::uint64_t>(c.Lk + 1)));
      break;
    case documents_shared:
    case documents_and_causal:
      c.doc_lengths.push_back(random_split(rng, c.Lq, 1 + static_cast<Index>(rng() % 5)));
      break;
    case documents_per_row:
      for (Index b = 0; b < c.B; ++b) c.doc_lengths.push_back(random_split(rng, c.Lq, 1 + static_cast<Index>(rng() % 5)));
      break;
    case documents_offsets:
      c.q_offsets = offsets_of(random_split(rng, c.Lq, 1 + static_cast<Index>(rng() % 5)));
      c.k_offsets = c.q_offsets;
      break;
    case documents_cross: {
      const Index parts = 1 + static_cast<Index>(rng() % 5);
      c.q_offsets = offsets_of(random_split(rng, c.Lq, parts));
      c.k_offsets = offsets_of(random_split(rng, c.Lk, parts));
      break;
    }
    default:
      break;
  }
  if (uses_dense(kind)) {
    c.dense_shape = random_broadcast_shape(rng, c);
    const Index n = numel_of_shape(c.dense_shape);
    const std::uint64_t density = rng() % 3;  // keep probability 0.9, 0.6 or 0.25
    for (Index e = 0; e < n; ++e) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      const bool keep = u < (density == 0 ? 0.9 : density == 1 ? 0.6 : 0.25);
      c.dense_values.push_back(static_cast<char>(kind == forbid || kind == forbid_or_window_and_additive ? !keep : keep));
    }
  }
  if (uses_bias(kind)) {
    c.bias_shape = random_broadcast_shape(rng, c);
    const Index n = numel_of_shape(c.bias_shape);
    std::normal_distribution<double> normal(0, 1.5);
    const bool with_minus_infinity = kind == additive && rng() % 4 != 0;
    for (Index e = 0; e < n; ++e) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      c.bias_values.push_back(with_minus_infinity && u < 0.3 ? -std::numeric_limits<double>::infinity() : normal(rng));
    }
  }
  return c;
}

template <class T>
Tensor<T> tensor_of(const std::vector<double>& values, const Shape& shape) {
  return veil::from_vector<T>(std::vector<T>(values.begin(), values.end()), shape);
}

std::vector<double> random_values(std::mt19937_64& rng, Index count) {
  std::normal_distribution<double> normal(0, 1);
  std::vector<double> values(static_cast<std::size_t>(count));
  for (auto& v : values) v = normal(rng);
  return values;
}

template <class T>
mask::Mask build_mask(const Case& c, const Tensor<T>& bias) {
  Tensor<bool> dense;
  if (uses_dense(c.kind)) {
    dense = veil::zeros<bool>(c.dense_shape);
    for (std::size_t e = 0; e < c.dense_values.size(); ++e) dense.data()[e] = c.dense_values[e] != 0;
  }
  const Index shift = c.Lk - c.Lq;
  switch (c.kind) {
    case none: return mask::none();
    case causal: return mask::causal();
    case causal_top_left: return mask::causal_top_left();
    case sliding_window: return mask::sliding_window(c.left, c.right);
    case key_padding: return mask::key_padding(c.lengths);
    case documents_shared: return mask::documents(c.doc_lengths[0]);
    case documents_per_row: return mask::documents(c.doc_lengths);
    case documents_offsets: return mask::documents_from_offsets(c.q_offsets);
    case documents_cross: return mask::documents_from_offsets(c.q_offsets, c.k_offsets);
    case allow: return mask::allow(dense);
    case forbid: return mask::forbid(dense);
    case additive: return mask::additive(bias);
    case custom:
      return mask::custom([](Index b, Index h, Index i, Index j) { return (i * 31 + j * 17 + b * 7 + h * 3) % 5 != 0; });
    case custom_classified:
      // Bottom-right causal written as a predicate with an exact tile classifier.
      return mask::custom([shift](Index, Index, Index i, Index j) { return j <= i + shift; },
                          [shift](Index, Index, Index q0, Index q1, Index k0, Index k1) {
                            if (k0 > q1 - 1 + shift) return mask::TileKind::empty;
                            if (k1 - 1 <= q0 + shift) return mask::TileKind::full;
                            return mask::TileKind::partial;
                          });
    case documents_and_causal: return mask::documents(c.doc_lengths[0]) & mask::causal();
    case key_padding_and_causal: return mask::key_padding(c.lengths) & mask::causal();
    case causal_and_window: return mask::causal() & mask::sliding_window(c.left, c.right);
    case allow_and_additive: return mask::allow(dense) & mask::additive(bias);
    case prefix_lm: return mask::causal() | mask::key_padding(c.lengths);
    case forbid_or_window_and_additive:
      return (mask::forbid(dense) | mask::sliding_window(c.left, c.right)) & mask::additive(bias);
    default: return mask::none();
  }
}

/// The outputs and gradients of one run, in double.
struct Run {
  std::vector<double> out, lse, dq, dk, dv, dbias;
};

template <class T>
std::vector<double> values_of(const Tensor<T>& t) {
  const auto v = t.detach().to_vector();
  return std::vector<double>(v.begin(), v.end());
}

struct Inputs {
  std::vector<double> q, k, v, grad_out;
};

template <class T, class Attend>
Run run(const Case& c, const Inputs& in, Attend attend) {
  auto q = tensor_of<T>(in.q, {c.B, c.H, c.Lq, c.D}).set_requires_grad(true);
  auto k = tensor_of<T>(in.k, {c.B, c.Hkv, c.Lk, c.D}).set_requires_grad(true);
  auto v = tensor_of<T>(in.v, {c.B, c.Hkv, c.Lk, c.Dv}).set_requires_grad(true);
  Tensor<T> bias;
  if (uses_bias(c.kind)) bias = tensor_of<T>(c.bias_values, c.bias_shape).set_requires_grad(true);
  const mask::Mask m = build_mask<T>(c, bias);
  attention::AttentionResult<T> result = attend(q, k, v, m);
  result.output.backward(tensor_of<T>(in.grad_out, {c.B, c.H, c.Lq, c.Dv}));
  Run r;
  r.out = values_of(result.output);
  r.lse = values_of(result.logsumexp);
  r.dq = values_of(q.grad());
  r.dk = values_of(k.grad());
  r.dv = values_of(v.grad());
  if (bias.defined()) r.dbias = values_of(bias.grad());
  return r;
}

/// max |a - b| over entries finite in `golden`; infinity when a non-finite golden entry is not
/// reproduced exactly, or when a finite golden entry is matched by a non-finite value.
double max_error(const std::vector<double>& a, const std::vector<double>& golden) {
  if (a.size() != golden.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    if (!std::isfinite(golden[e])) {
      const bool same = std::isnan(golden[e]) ? std::isnan(a[e]) : a[e] == golden[e];
      if (!same) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (!std::isfinite(a[e])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(a[e] - golden[e]));
  }
  return worst;
}

double max_magnitude(const std::vector<double>& values) {
  double m = 0;
  for (double v : values)
    if (std::isfinite(v)) m = std::max(m, std::abs(v));
  return m;
}

struct Stats {
  double worst_ratio = 0;  // max over cases of error / allowed
  std::string worst_case;
  double worst_output_error = 0, worst_grad_error = 0;
  int cases = 0;
};

void check_quantity(const char* name, const std::vector<double>& fused, const std::vector<double>& naive,
                    const std::vector<double>& golden, double factor, bool is_gradient, const Case& c, Stats& stats,
                    double floor_multiplier = 1.0, double cancellation = 0.0) {
  const double fused_error = max_error(fused, golden);
  const double naive_error = max_error(naive, golden);
  const double floor = 1e-5 * floor_multiplier * (is_gradient ? std::max(1.0, max_magnitude(golden)) : 1.0);
  const double allowed = factor * (std::isfinite(naive_error) ? naive_error : 0.0) + floor + cancellation;
  if (is_gradient)
    stats.worst_grad_error = std::max(stats.worst_grad_error, fused_error);
  else
    stats.worst_output_error = std::max(stats.worst_output_error, fused_error);
  if (fused_error / allowed > stats.worst_ratio) {
    stats.worst_ratio = fused_error / allowed;
    stats.worst_case = std::string(name) + ": " + c.describe();
  }
  INFO(name << ": " << c.describe());
  INFO("max|fused - ref64| = " << fused_error << ", max|naive32 - ref64| = " << naive_error << ", allowed "
                               << allowed);
  CHECK(std::isfinite(naive_error));  // the oracle itself reproduces ref64's non-finite entries
  CHECK(fused_error <= allowed);
}

void run_case(const Case& c, Stats& stats) {
  std::mt19937_64 data(c.data_seed);
  Inputs in;
  in.q = random_values(data, c.B * c.H * c.Lq * c.D);
  in.k = random_values(data, c.B * c.Hkv * c.Lk * c.D);
  in.v = random_values(data, c.B * c.Hkv * c.Lk * c.Dv);
  in.grad_out = random_values(data, c.B * c.H * c.Lq * c.Dv);

  auto fused = [](const auto& q, const auto& k, const auto& v, const mask::Mask& m) {
    return attention::scaled_dot_product_attention_with_logsumexp(q, k, v, m);
  };
  auto reference = [](const auto& q, const auto& k, const auto& v, const mask::Mask& m) {
    return attention::reference_attention(q, k, v, m);
  };
  const Run f32 = run<float>(c, in, fused);
  const Run n32 = run<float>(c, in, reference);
  const Run r64 = run<double>(c, in, reference);

  check_quantity("output", f32.out, n32.out, r64.out, 2, false, c, stats);
  check_quantity("logsumexp", f32.lse, n32.lse, r64.lse, 2, false, c, stats);
  auto growth = [](double terms) { return std::sqrt(std::max(1.0, terms / 16)); };
  const double group = static_cast<double>(c.H / c.Hkv);
  check_quantity("dq", f32.dq, n32.dq, r64.dq, 3, true, c, stats, growth(static_cast<double>(c.Lk)));
  check_quantity("dk", f32.dk, n32.dk, r64.dk, 3, true, c, stats, growth(group * static_cast<double>(c.Lq)));
  check_quantity("dv", f32.dv, n32.dv, r64.dv, 3, true, c, stats, growth(group * static_cast<double>(c.Lq)));
  if (uses_bias(c.kind)) {
    const double summed = static_cast<double>(c.B * c.H * c.Lq * c.Lk) / static_cast<double>(numel_of_shape(c.bias_shape));
    // dS = P∘(dP − δ): dP_ij = dO_i·v_j and δ_i = dO_i·O_i are sums of Dv products taken in
    // different orders, so where the exact dS is 0 (Lk = 1: P = 1, O = v) the fused kernel keeps
    // their rounding difference, up to a few ulps of Σ_d |dO_id·O_id|, while the naive path
    // cancels exactly and allows nothing. Allowed: 4 ulps of the largest such sum, per summed term.
    double largest_dot = 0;
    for (Index row = 0; row < c.B * c.H * c.Lq; ++row) {
      double dot = 0;
      for (Index d = 0; d < c.Dv; ++d) dot += std::abs(in.grad_out[row * c.Dv + d] * r64.out[row * c.Dv + d]);
      if (std::isfinite(dot)) largest_dot = std::max(largest_dot, dot);
    }
    const double cancellation = 4 * std::ldexp(1.0, -24) * largest_dot * growth(summed);
    check_quantity("dbias", f32.dbias, n32.dbias, r64.dbias, 3, true, c, stats, growth(summed), cancellation);
  }
  ++stats.cases;
}

}  // namespace

TEST_CASE("The fused kernel matches the float64 reference on a seeded random grid of masks and shapes",
          "[attention][fused][reference][random]") {
  const std::uint64_t seed = seed_from_env();
  const double scale = scale_from_env();
  const int total = std::max(static_cast<int>(kind_count), static_cast<int>(2000 * scale));
  WARN("fused_vs_reference: seed " << seed << " (set VEIL_ATTENTION_SEED to reproduce), " << total
                                   << " cases (VEIL_TEST_SCALE=" << scale << ")");
  std::mt19937_64 rng(seed);
  Stats stats;
  int large_cases = 0;
  double large_seconds = 0, small_seconds = 0;
  for (int n = 0; n < total; ++n) {
    const int kind = n % kind_count;       // every mask kind equally often
    const bool large = rng() % 50 == 0;    // ~2% of the cases reach 127..257
    const Case c = random_case(rng, kind, large);
    large_cases += large ? 1 : 0;
    INFO("case " << n << " of seed " << seed);
    const auto start = std::chrono::steady_clock::now();
    run_case(c, stats);
    (large ? large_seconds : small_seconds) += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  WARN("fused_vs_reference: " << stats.cases << " cases (" << large_cases << " large); max output error "
                              << stats.worst_output_error << ", max gradient error " << stats.worst_grad_error
                              << "; worst error/allowed " << stats.worst_ratio << " at " << stats.worst_case
                              << "; time " << small_seconds << " s small, " << large_seconds << " s large");
  CHECK(stats.cases == total);
  CHECK(stats.cases >= 2000 * std::min(scale, 1.0) - 1);
}

TEST_CASE("Lengths around the tile sizes agree with the reference for every query/key length pair",
          "[attention][fused][reference][tiles]") {
  // Deterministic sweep: both tile sizes (64 and 32 query rows, 128 keys) straddled, Lq != Lk
  // both ways, causal and key padding (partial tiles) and none (full tiles).
  Stats stats;
  std::mt19937_64 rng(7);
  for (Index D : {8, 65})
    for (Index Lq : {1, 32, 33, 64, 65, 129})
      for (Index Lk : {1, 127, 128, 129, 257})
        for (int kind : {int(none), int(key_padding_and_causal)}) {
          Case c;
          c.kind = kind;
          c.B = 1, c.H = 2, c.Hkv = 1, c.Lq = Lq, c.Lk = Lk, c.D = D, c.Dv = D == 8 ? 3 : D;
          c.lengths = {Lk - Lk / 3};
          c.data_seed = rng();
          run_case(c, stats);
        }
  WARN("tile sweep: " << stats.cases << " cases; max output error " << stats.worst_output_error
                      << ", max gradient error " << stats.worst_grad_error << "; worst error/allowed "
                      << stats.worst_ratio << " at " << stats.worst_case);
  CHECK(stats.cases == 2 * 6 * 5 * 2);
}

TEST_CASE("A huge finite bias on every kept score of a row leaves that row's gradients exact",
          "[attention][fused][reference][additive]") {
  // Row 1 of each head carries -1e30 on all its keys, row 3 on all keys but one. In float,
  // m + log l rounds to m = -1e30 there, so the backward must not rebuild P from that sum alone.
  const Index B = 1, H = 2, Lq = 5, Lk = 7, D = 4;
  std::mt19937_64 rng(11);
  const Inputs in{random_values(rng, B * H * Lq * D), random_values(rng, B * H * Lk * D),
                  random_values(rng, B * H * Lk * D), random_values(rng, B * H * Lq * D)};
  std::vector<double> bias_values(static_cast<std::size_t>(Lq * Lk), 0.0);
  for (Index j = 0; j < Lk; ++j) bias_values[static_cast<std::size_t>(1 * Lk + j)] = -1e30;
  for (Index j = 1; j < Lk; ++j) bias_values[static_cast<std::size_t>(3 * Lk + j)] = -1e30;

  const auto run_with = [&](auto tag, bool fused) {
    using T = decltype(tag);
    auto q = tensor_of<T>(in.q, {B, H, Lq, D}).set_requires_grad(true);
    auto k = tensor_of<T>(in.k, {B, H, Lk, D}).set_requires_grad(true);
    auto v = tensor_of<T>(in.v, {B, H, Lk, D}).set_requires_grad(true);
    const auto m = mask::additive(tensor_of<T>(bias_values, {Lq, Lk}));
    const auto out = fused ? veil::scaled_dot_product_attention(q, k, v, m) : attention::reference_attention(q, k, v, m).output;
    out.backward(tensor_of<T>(in.grad_out, {B, H, Lq, D}));
    return std::vector<std::vector<double>>{values_of(out), values_of(q.grad()), values_of(k.grad()), values_of(v.grad())};
  };
  const auto fused = run_with(float{}, true), golden = run_with(double{}, false);
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (std::size_t t = 0; t < fused.size(); ++t) {
    INFO(names[t] << ": max error " << max_error(fused[t], golden[t]));
    CHECK(max_error(fused[t], golden[t]) < 1e-5 * std::max(1.0, max_magnitude(golden[t])));
  }
}

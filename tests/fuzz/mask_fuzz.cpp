// Fuzzes the mask constructors, their validation and the fused attention against the reference.
//
// The input picks a small geometry (B <= 2, H <= 2, Lq, Lk <= 12, D, Dv <= 4) and a mask
// expression: causal, sliding windows, key padding, documents (lengths, one or per-row packings,
// offsets, query/key offsets), allow/forbid/additive tensors of fuzzed shapes, custom predicates,
// combined with & and |, with lengths, offsets and shapes taken from the input, so most of them
// are wrong in some way. Accepted outcomes:
//   - a veil::Error, from the constructor or from both attention paths (same error type);
//   - an output equal to reference_attention within 1e-4, with no NaN, the same logsumexp, and
//     (when the input asks) the same gradients within 1e-3.
// On the side, the mask bound with tiny tiles must agree with its materialised keep pattern:
// fill() gives the same bytes, and classify() is right about empty and full tiles.
#include <veil/veil.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <typeinfo>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil::mask::Mask;
using veil_fuzz::fuzz_failure;

struct Geometry {
  Index batch, heads, kv_heads, query_length, key_length, head_dim, value_dim;
};

class MaskBuilder {
 public:
  MaskBuilder(FuzzedDataProvider& in, const Geometry& g) : in_(in), g_(g) {}

  /// The masks built so far, in the order their constructors ran (printed with a finding).
  std::string description;

  Mask build(int depth) {
    const int kind = in_.ConsumeIntegralInRange(0, depth > 0 ? 15 : 12);
    static constexpr const char* names[] = {"none", "causal", "causal_top_left", "sliding_window", "key_padding",
                                            "documents", "documents(per row)", "documents_from_offsets",
                                            "documents_from_offsets(q, k)", "allow", "forbid", "additive", "custom",
                                            "&", "|", "causal &"};
    description += std::string(description.empty() ? "" : " ") + names[kind];
    switch (kind) {
      case 0: return veil::mask::none();
      case 1: return veil::mask::causal();
      case 2: return veil::mask::causal_top_left();
      case 3: return veil::mask::sliding_window(window_extent(), window_extent());
      case 4: return veil::mask::key_padding(lengths(g_.key_length));
      case 5: return veil::mask::documents(lengths(g_.query_length));
      case 6: {
        std::vector<std::vector<Index>> rows(static_cast<std::size_t>(in_.ConsumeIntegralInRange(0, 4)));
        for (auto& row : rows) row = lengths(g_.query_length);
        return veil::mask::documents(rows);
      }
      case 7: return veil::mask::documents_from_offsets(offsets(g_.query_length));
      case 8: {
        const std::size_t count = in_.ConsumeIntegralInRange<std::size_t>(0, 5);
        auto query = offsets(g_.query_length, count);
        // Mostly the same number of sequences, so that the lengths are what gets checked.
        auto key = offsets(g_.key_length, in_.ConsumeBool() ? count : in_.ConsumeIntegralInRange<std::size_t>(0, 5));
        return veil::mask::documents_from_offsets(std::move(query), std::move(key));
      }
      case 9: return veil::mask::allow(bool_tensor());
      case 10: return veil::mask::forbid(bool_tensor());
      case 11: return veil::mask::additive(bias_tensor());
      case 12: return custom();
      case 13:
      case 14: {
        Mask a = build(depth - 1);
        Mask b = build(depth - 1);
        return kind == 13 ? (a & b) : (a | b);
      }
      default: return veil::mask::causal() & build(depth - 1);
    }
  }

 private:
  Index window_extent() {
    const int pick = in_.ConsumeIntegralInRange(-2, 16);
    if (pick == 15) return veil::mask::unbounded;
    if (pick == 16) return std::numeric_limits<Index>::max();  // clamped to unbounded
    return pick;
  }

  Index length_in(Index limit) { return in_.ConsumeIntegralInRange<Index>(-1, limit + 1); }

  std::vector<Index> lengths(Index total) {
    std::vector<Index> out(in_.ConsumeIntegralInRange<std::size_t>(0, 5));
    for (auto& length : out) length = length_in(total);
    return out;
  }

  std::vector<Index> offsets(Index total) { return offsets(total, in_.ConsumeIntegralInRange<std::size_t>(0, 5)); }

  /// Offsets built from steps, so that valid cu_seqlens (0, non-decreasing, ending at total) come up often.
  std::vector<Index> offsets(Index total, std::size_t sequences) {
    if (sequences == 0 && in_.ConsumeBool()) return {};
    std::vector<Index> out{in_.ConsumeIntegralInRange<Index>(0, 8) == 0 ? 1 : 0};
    for (std::size_t s = 0; s < sequences; ++s) out.push_back(out.back() + in_.ConsumeIntegralInRange<Index>(-1, total));
    if (in_.ConsumeBool() && !out.empty()) out.back() = total;
    return out;
  }

  /// A shape that broadcasts to [B, H, Lq, Lk] most of the time, and sometimes not at all.
  Shape mask_shape() {
    const int rank = in_.ConsumeIntegralInRange(0, 5);
    Shape shape;
    const Index full[] = {g_.batch, g_.heads, g_.query_length, g_.key_length};
    for (int d = 0; d < rank; ++d) {
      const int pick = in_.ConsumeIntegralInRange(0, 7);
      const int aligned = 4 - rank + d;  // the dimension of [B, H, Lq, Lk] this one lines up with
      if (pick <= 3 && aligned >= 0) shape.push_back(full[aligned]);
      else if (pick <= 5) shape.push_back(1);
      else shape.push_back(in_.ConsumeIntegralInRange<Index>(0, 4));
    }
    return shape;
  }

  Tensor<bool> bool_tensor() {
    Tensor<bool> out = Tensor<bool>::empty(mask_shape());
    // One bit per element from a 64-bit pattern, density chosen by the input.
    const auto pattern = in_.ConsumeIntegral<std::uint64_t>();
    for (Index e = 0; e < out.numel(); ++e) out.data()[e] = (pattern >> (e % 64)) & 1;
    description += veil::detail::concat(veil::to_string(out.shape()), "{", veil::to_string(Shape(out.data(), out.data() + out.numel())), "}");
    return non_contiguous_maybe(out);
  }

  Tensor<float> bias_tensor() {
    Tensor<float> out = Tensor<float>::empty(mask_shape());
    // -1e30 is a large finite penalty: a row whose every kept score carries it has m + log l
    // equal to m in float, which the backward must survive (fused_kernel.hpp saves both).
    constexpr float values[] = {0.0f, -std::numeric_limits<float>::infinity(), 0.5f, -1.25f, 2.0f,
                                -std::numeric_limits<float>::infinity(), -1e30f, 1.0f};
    const auto pattern = in_.ConsumeIntegral<std::uint64_t>();
    for (Index e = 0; e < out.numel(); ++e) out.data()[e] = values[(pattern >> (3 * (e % 21))) & 7];
    description += veil::detail::concat(veil::to_string(out.shape()), "{");
    for (Index e = 0; e < out.numel(); ++e) description += veil::detail::concat(e ? "," : "", out.data()[e]);
    description += "}";
    return non_contiguous_maybe(out);
  }

  /// Sometimes the same values through a transposed copy, so that strided mask views are read.
  template <class V>
  Tensor<V> non_contiguous_maybe(const Tensor<V>& x) {
    if (x.dim() < 2 || !in_.ConsumeBool()) return x;
    description += "(strided)";
    const Tensor<V> swapped = veil::transpose(x, -1, -2).contiguous();
    return veil::transpose(swapped, -1, -2);
  }

  Mask custom() {
    const auto pattern = in_.ConsumeIntegral<std::uint64_t>();
    const int classifier = in_.ConsumeIntegralInRange(0, 2);
    const auto keep = [pattern](Index b, Index h, Index i, Index j) {
      return ((pattern >> ((b * 7 + h * 5 + i * 3 + j) % 64)) & 1) != 0;
    };
    if (classifier == 0) return veil::mask::custom(keep);
    if (classifier == 1)
      return veil::mask::custom(keep, [](Index, Index, Index, Index, Index, Index) { return veil::mask::TileKind::partial; });
    return veil::mask::custom(keep, [keep](Index b, Index h, Index q0, Index q1, Index k0, Index k1) {
      Index kept = 0;
      for (Index i = q0; i < q1; ++i)
        for (Index j = k0; j < k1; ++j) kept += keep(b, h, i, j);
      return kept == 0 ? veil::mask::TileKind::empty
             : kept == (q1 - q0) * (k1 - k0) ? veil::mask::TileKind::full
                                               : veil::mask::TileKind::partial;
    });
  }

  FuzzedDataProvider& in_;
  const Geometry& g_;
};

/// Binds `mask` with tiny tiles and checks every tile against the materialised keep pattern.
void check_tiles(const Mask& mask, const Geometry& g, Index tile_q, Index tile_k) {
  const Tensor<bool> keep = veil::mask::materialize<float>(mask, g.batch, g.heads, g.query_length, g.key_length);
  const veil::mask::Geometry geometry{g.batch, g.heads, g.query_length, g.key_length, tile_q, tile_k};
  const auto bound = veil::mask::bind<float>(mask, geometry);
  std::vector<std::uint8_t> tile(static_cast<std::size_t>(tile_q * tile_k));
  for (Index b = 0; b < g.batch; ++b)
    for (Index h = 0; h < g.heads; ++h)
      for (Index q0 = 0; q0 < g.query_length; q0 += tile_q)
        for (Index k0 = 0; k0 < g.key_length; k0 += tile_k) {
          const Index q1 = std::min(q0 + tile_q, g.query_length), k1 = std::min(k0 + tile_k, g.key_length);
          bound->fill(b, h, q0, q1, k0, k1, tile.data(), tile_k);
          Index kept = 0;
          for (Index i = q0; i < q1; ++i)
            for (Index j = k0; j < k1; ++j) {
              const bool expected = keep.data()[((b * g.heads + h) * g.query_length + i) * g.key_length + j];
              const std::uint8_t got = tile[(i - q0) * tile_k + (j - k0)];
              VEIL_FUZZ_CHECK(got <= 1 && (got == 1) == expected, "fill: edge (b=", b, ", h=", h, ", i=", i, ", j=", j,
                              ") with tiles ", tile_q, "x", tile_k, " is ", int(got), ", materialize says ", expected);
              kept += expected;
            }
          const auto kind = bound->classify(b, h, q0, q1, k0, k1);
          const Index all = (q1 - q0) * (k1 - k0);
          using veil::mask::TileKind;
          VEIL_FUZZ_CHECK(kind != TileKind::empty || kept == 0, "classify: tile (b=", b, ", h=", h, ", q0=", q0, ", k0=", k0,
                          ") is called empty but keeps ", kept, " edges");
          VEIL_FUZZ_CHECK(kind != TileKind::full || kept == all, "classify: tile (b=", b, ", h=", h, ", q0=", q0, ", k0=", k0,
                          ") is called full but keeps ", kept, " of ", all, " edges");
          VEIL_FUZZ_CHECK(kind != TileKind::partial || !bound->classifies_exactly() || (kept > 0 && kept < all),
                          "classify: tile (b=", b, ", h=", h, ", q0=", q0, ", k0=", k0, ") is called partial by an exact ",
                          "classifier but keeps ", kept, " of ", all, " edges");
          if (bound->is_interval())
            for (Index i = q0; i < q1; ++i) {
              Index lo = 0, hi = 0;
              bound->row_interval(b, h, i, lo, hi);
              for (Index j = k0; j < k1; ++j)
                VEIL_FUZZ_CHECK((lo <= j && j < hi) == (tile[(i - q0) * tile_k + (j - k0)] == 1), "row_interval [", lo,
                                ", ", hi, ") of row ", i, " disagrees with fill at key ", j);
            }
        }
}

void check_close(const Tensor<float>& fused, const Tensor<float>& reference, double tolerance, const char* what) {
  VEIL_FUZZ_CHECK(fused.shape() == reference.shape(), what, ": shape ", veil::to_string(fused.shape()), " vs reference ",
                  veil::to_string(reference.shape()));
  const auto a = fused.to_vector(), b = reference.to_vector();
  for (std::size_t e = 0; e < a.size(); ++e) {
    if (a[e] == b[e]) continue;  // also equal infinities
    VEIL_FUZZ_CHECK(!std::isnan(a[e]) && !std::isnan(b[e]), what, ": element ", e, " is ", a[e], ", reference ", b[e]);
    // Relative for large values (a row of -1e30 biases has a logsumexp near -1e30).
    VEIL_FUZZ_CHECK(std::abs(double(a[e]) - double(b[e])) <= tolerance * std::max(1.0, std::abs(double(b[e]))), what,
                    ": element ", e, " is ", a[e], ", reference ", b[e]);
  }
}

/// Gradients of two leaves of the same shape; an undefined gradient counts as zeros.
void check_grads_close(const Tensor<float>& fused_leaf, const Tensor<float>& reference_leaf, const char* what) {
  const auto grad_or_zeros = [](const Tensor<float>& x) {
    const Tensor<float> grad = x.grad();
    return grad.defined() ? grad : veil::zeros<float>(x.shape());
  };
  check_close(grad_or_zeros(fused_leaf), grad_or_zeros(reference_leaf), 1e-3, what);
}

/// A fresh leaf with x's values, so that each path accumulates its own gradient.
Tensor<float> leaf(const Tensor<float>& x, bool requires_grad) {
  Tensor<float> out = x.detach().contiguous();
  if (out.shares_storage_with(x)) out = veil::detail::copy_contiguous(x);
  out.set_requires_grad(requires_grad);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  veil::set_num_threads(1);  // each input is tiny; threads would only add noise and cost
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Geometry g{};
  g.batch = in.ConsumeIntegralInRange<Index>(0, 2);
  g.heads = in.ConsumeIntegralInRange<Index>(1, 2);
  g.kv_heads = g.heads == 2 && in.ConsumeBool() ? 1 : g.heads;  // grouped-query attention
  g.query_length = in.ConsumeIntegralInRange<Index>(0, 12);
  g.key_length = in.ConsumeBool() ? g.query_length : in.ConsumeIntegralInRange<Index>(0, 12);
  g.head_dim = in.ConsumeIntegralInRange<Index>(1, 4);
  g.value_dim = in.ConsumeIntegralInRange<Index>(1, 4);
  const Index tile_q = in.ConsumeIntegralInRange<Index>(1, 5), tile_k = in.ConsumeIntegralInRange<Index>(1, 5);
  const auto seed = in.ConsumeIntegral<std::uint8_t>();
  const bool backward = in.ConsumeIntegralInRange(0, 3) == 0;  // the costly part: on a quarter of the inputs
  veil::attention::AttentionOptions options;
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 1: options.scale = 0.5; break;
    case 2: options.dropout = 0.25; break;
    case 3: options.fully_masked_rows = veil::attention::FullyMaskedRows::throw_error; break;
    default: break;
  }

  std::string& description = veil_fuzz::input_description();
  description = veil::detail::concat("B=", g.batch, " H=", g.heads, " Hkv=", g.kv_heads, " Lq=", g.query_length,
                                     " Lk=", g.key_length, " D=", g.head_dim, " Dv=", g.value_dim, " tiles=", tile_q,
                                     "x", tile_k, " seed=", int(seed), " backward=", backward,
                                     " scale=", options.scale.value_or(0), " dropout=", options.dropout,
                                     " throw_on_masked_rows=",
                                     options.fully_masked_rows == veil::attention::FullyMaskedRows::throw_error,
                                     " mask:");
  std::optional<Mask> built;
  MaskBuilder builder(in, g);
  try {
    built = builder.build(3);
    description += " " + builder.description;
  } catch (const veil::MaskError&) {
    return 0;  // a constructor refused its arguments: accepted
  } catch (const std::exception& error) {
    fuzz_failure("a mask constructor threw something other than veil::MaskError: ", error.what());
  }
  const Mask& mask = *built;

  bool binds = true;
  try {
    check_tiles(mask, g, tile_q, tile_k);
  } catch (const veil::MaskError&) {
    binds = false;
  } catch (const std::exception& error) {
    fuzz_failure("binding a mask threw something other than veil::MaskError: ", error.what());
  }

  veil::Generator generator(seed);
  const Tensor<float> q = veil::randn<float>({g.batch, g.heads, g.query_length, g.head_dim}, generator);
  const Tensor<float> k = veil::randn<float>({g.batch, g.kv_heads, g.key_length, g.head_dim}, generator);
  const Tensor<float> v = veil::randn<float>({g.batch, g.kv_heads, g.key_length, g.value_dim}, generator);
  std::vector<Tensor<float>> biases;
  veil::mask::collect_additive<float>(mask, biases);
  for (auto& bias : biases) bias.set_requires_grad(backward);

  // Each path with its own leaves and an identically seeded dropout generator.
  struct Run {
    Tensor<float> q, k, v, output, logsumexp;
    std::vector<Tensor<float>> bias_grads;
    const std::type_info* error = nullptr;
    std::string message;
  };
  const auto run = [&](bool fused) {
    Run r{leaf(q, backward), leaf(k, backward), leaf(v, backward), {}, {}, {}, nullptr, {}};
    veil::Generator dropout_generator(seed + 1000u);
    veil::attention::AttentionOptions local = options;
    if (local.dropout > 0) local.generator = &dropout_generator;
    for (auto& bias : biases) bias.zero_grad();
    try {
      auto result = fused ? veil::attention::scaled_dot_product_attention_with_logsumexp(r.q, r.k, r.v, mask, local)
                          : veil::attention::reference_attention(r.q, r.k, r.v, mask, local);
      r.output = result.output;
      r.logsumexp = result.logsumexp;
      if (backward && r.output.numel() > 0) {
        veil::Generator upstream(seed + 2000u);
        r.output.backward(veil::randn<float>(r.output.shape(), upstream));
        for (auto& bias : biases) r.bias_grads.push_back(bias.grad());
      }
    } catch (const veil::Error& error) {
      r.error = &typeid(error);
      r.message = error.what();
    } catch (const std::exception& error) {
      fuzz_failure(fused ? "scaled_dot_product_attention" : "reference_attention",
                   " threw something other than a veil::Error: ", error.what());
    }
    return r;
  };
  const Run fused = run(true);
  const Run reference = run(false);

  VEIL_FUZZ_CHECK((fused.error == nullptr) == (reference.error == nullptr), "the fused path ",
                  fused.error ? "threw: " + fused.message : std::string("succeeded"), " but the reference ",
                  reference.error ? "threw: " + reference.message : std::string("succeeded"));
  if (fused.error) {
    VEIL_FUZZ_CHECK(*fused.error == *reference.error, "the paths threw different error types: ", fused.message, " / ",
                    reference.message);
    return 0;
  }
  VEIL_FUZZ_CHECK(binds, "attention accepted a mask that bind() refused with tiles ", tile_q, "x", tile_k);

  for (float x : fused.output.to_vector()) VEIL_FUZZ_CHECK(!std::isnan(x), "the fused output holds NaN");
  check_close(fused.output, reference.output, 1e-4, "output");
  check_close(fused.logsumexp, reference.logsumexp, 1e-4, "logsumexp");
  const auto lse = fused.logsumexp.to_vector();
  const auto out = fused.output.to_vector();
  for (std::size_t row = 0; row < lse.size(); ++row)
    if (lse[row] == -std::numeric_limits<float>::infinity())
      for (Index c = 0; c < g.value_dim; ++c)
        VEIL_FUZZ_CHECK(out[row * g.value_dim + c] == 0.0f, "a fully masked row (", row, ") outputs ", out[row * g.value_dim + c]);

  if (backward && fused.output.numel() > 0) {
    check_grads_close(fused.q, reference.q, "dq");
    check_grads_close(fused.k, reference.k, "dk");
    check_grads_close(fused.v, reference.v, "dv");
    for (std::size_t b = 0; b < biases.size(); ++b) {
      const bool has_fused = fused.bias_grads[b].defined(), has_reference = reference.bias_grads[b].defined();
      VEIL_FUZZ_CHECK(has_fused == has_reference, "bias ", b, ": only one path gave it a gradient");
      if (has_fused) check_close(fused.bias_grads[b], reference.bias_grads[b], 1e-3, "dbias");
    }
  }
  return 0;
}

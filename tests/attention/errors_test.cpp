// Malformed masks and arguments give typed errors naming the argument, the expected and the actual
// value, from the fused and the reference path alike (DESIGN.md, "Masks" and "Errors").
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Tensor;
using veil_test::MessageContains;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

struct Inputs {
  Tensor<float> q, k, v;
};

Inputs inputs(Index B = 2, Index H = 2, Index Hkv = 2, Index Lq = 10, Index Lk = 10, Index D = 4, Index Dv = 4) {
  veil::Generator gen(1);
  return {veil::randn<float>({B, H, Lq, D}, gen), veil::randn<float>({B, Hkv, Lk, D}, gen),
          veil::randn<float>({B, Hkv, Lk, Dv}, gen)};
}

template <class M>
concept AllowTakes = requires(M m) { mask::allow(m); };
template <class M>
concept ForbidTakes = requires(M m) { mask::forbid(m); };
template <class M>
concept AdditiveTakes = requires(M m) { mask::additive(m); };
template <class Q, class K, class V>
concept AttentionTakes = requires(Q q, K k, V v) { veil::scaled_dot_product_attention(q, k, v); };

/// Every named substring must appear in the message of the MaskError both paths throw.
void require_mask_error(const Inputs& in, const mask::Mask& m, const std::vector<std::string>& parts) {
  for (const auto& part : parts) {
    REQUIRE_THROWS_MATCHES(veil::scaled_dot_product_attention(in.q, in.k, in.v, m), veil::MaskError,
                           MessageContains(part));
    REQUIRE_THROWS_MATCHES(attention::reference_attention(in.q, in.k, in.v, m), veil::MaskError, MessageContains(part));
  }
}

template <class Error>
void require_error(const Inputs& in, const attention::AttentionOptions& options, const std::vector<std::string>& parts) {
  for (const auto& part : parts) {
    REQUIRE_THROWS_MATCHES(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::none(), options), Error,
                           MessageContains(part));
    REQUIRE_THROWS_MATCHES(attention::reference_attention(in.q, in.k, in.v, mask::none(), options), Error,
                           MessageContains(part));
  }
}

}  // namespace

TEST_CASE("Dense masks that do not broadcast to [B, H, Lq, Lk] throw MaskError with both shapes",
          "[attention][errors][mask]") {
  const auto in = inputs();  // [B, H, Lq, Lk] = [2, 2, 10, 10]
  require_mask_error(in, mask::allow(veil::ones<bool>({10, 9})),
                     {"allow", "[10, 9]", "not broadcastable", "[2, 2, 10, 10]"});
  require_mask_error(in, mask::forbid(veil::zeros<bool>({3, 1, 10, 10})), {"forbid", "[3, 1, 10, 10]", "[2, 2, 10, 10]"});
  require_mask_error(in, mask::additive(veil::zeros<float>({2, 2, 2, 10, 10})), {"additive", "rank 5", "[2, 2, 10, 10]"});
  require_mask_error(in, mask::additive(veil::zeros<float>({11})), {"additive", "[11]", "[2, 2, 10, 10]"});
  // Inside an & or |, too.
  require_mask_error(in, mask::causal() & mask::allow(veil::ones<bool>({1, 9, 1})), {"allow", "[1, 9, 1]"});
  // Broadcastable shapes are accepted.
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::allow(veil::ones<bool>({2, 1, 1, 10}))));
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::additive(veil::zeros<float>({10, 1}))));
}

TEST_CASE("An additive bias of another element type throws MaskError naming both types", "[attention][errors][mask]") {
  const auto in = inputs();
  require_mask_error(in, mask::additive(veil::zeros<double>({10, 10})), {"additive", "double", "float"});
}

TEST_CASE("Malformed document offsets and lengths throw MaskError naming the offending entry",
          "[attention][errors][mask][documents]") {
  // Caught when the mask is built ...
  REQUIRE_THROWS_MATCHES(mask::documents_from_offsets({3, 5, 10}), veil::MaskError,
                         MessageContains("offsets must start at 0, got offsets[0] = 3"));
  REQUIRE_THROWS_MATCHES(mask::documents_from_offsets({0, 5, 1, 10}), veil::MaskError,
                         MessageContains("non-decreasing, got offsets[2] = 1 < offsets[1] = 5"));
  REQUIRE_THROWS_MATCHES(mask::documents_from_offsets({0, 4, 10}, {1, 4, 10}), veil::MaskError,
                         MessageContains("key_offsets must start at 0"));
  REQUIRE_THROWS_MATCHES(mask::documents_from_offsets({0, 4, 10}, {0, 10}), veil::MaskError,
                         MessageContains("query_offsets has 3 entries but key_offsets has 2"));
  REQUIRE_THROWS_MATCHES(mask::documents({4, -2, 8}), veil::MaskError,
                         MessageContains("lengths must be >= 0, got lengths[1] = -2"));
  REQUIRE_THROWS_MATCHES(mask::documents(std::vector<std::vector<Index>>{{10}, {12, -1}}), veil::MaskError,
                         MessageContains("got lengths[1] = -1"));
  // Lengths whose sum does not fit in an Index are refused before the offsets are added up.
  constexpr Index largest = std::numeric_limits<Index>::max();
  REQUIRE_THROWS_MATCHES(mask::documents({largest, 1}), veil::MaskError,
                         MessageContains("lengths must sum to at most 9223372036854775807, got lengths[1] = 1 after a "
                                         "sum of 9223372036854775807"));
  REQUIRE_THROWS_MATCHES(mask::documents(std::vector<std::vector<Index>>{{largest / 2 + 1, largest / 2 + 1}}),
                         veil::MaskError, MessageContains("got lengths[1] = 4611686018427387904"));
  // ... and when it meets the call's geometry.
  const auto in = inputs();  // Lq = Lk = 10
  require_mask_error(in, mask::documents({4, 5}), {"documents", "cover 9 query positions", "query length is 10"});
  require_mask_error(in, mask::documents({4, 7}), {"cover 11 query positions", "query length is 10"});
  require_mask_error(in, mask::documents_from_offsets({0, 4, 12}), {"cover 12", "length is 10"});
  require_mask_error(in, mask::documents_from_offsets({0, 4, 10}, {0, 3, 9}), {"cover 9 key positions", "key length is 10"});
  require_mask_error(in, mask::documents(std::vector<std::vector<Index>>{{10}, {5, 5}, {10}}),
                     {"packings are given for 3 batch rows but the batch size is 2"});
  require_mask_error(in, mask::documents({5, 5}) & mask::documents_from_offsets({0, 10, 11}), {"cover 11"});
}

TEST_CASE("Malformed key_padding lengths throw MaskError naming expected and actual", "[attention][errors][mask]") {
  const auto in = inputs();  // B = 2, Lk = 10
  require_mask_error(in, mask::key_padding({10, 4, 3}), {"key_padding", "lengths has 3 entries", "batch size is 2"});
  require_mask_error(in, mask::key_padding({4}), {"lengths has 1 entries", "batch size is 2"});
  require_mask_error(in, mask::key_padding({4, 11}), {"lengths[1] = 11", "out of range [0, 10]"});
  REQUIRE_THROWS_MATCHES(mask::key_padding({-1, 3}), veil::MaskError,
                         MessageContains("lengths must be >= 0, got lengths[0] = -1"));
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::key_padding({0, 10})));
}

TEST_CASE("A negative sliding window throws MaskError naming the side", "[attention][errors][mask]") {
  REQUIRE_THROWS_MATCHES(mask::sliding_window(-1, 0), veil::MaskError, MessageContains("left must be >= 0"));
  REQUIRE_THROWS_MATCHES(mask::sliding_window(-1, 0), veil::MaskError, MessageContains("got -1"));
  REQUIRE_THROWS_MATCHES(mask::sliding_window(3, -5), veil::MaskError, MessageContains("right must be >= 0"));
  REQUIRE_THROWS_MATCHES(mask::sliding_window(3, -5), veil::MaskError, MessageContains("got -5"));
  REQUIRE_NOTHROW(mask::sliding_window(0, mask::unbounded));
}

TEST_CASE("q, k, v of the wrong rank or with mismatched extents throw ShapeError with the shapes",
          "[attention][errors][shape]") {
  veil::Generator gen(2);
  const auto q = veil::randn<float>({2, 4, 6, 8}, gen), k = veil::randn<float>({2, 2, 7, 8}, gen);
  const auto v = veil::randn<float>({2, 2, 7, 5}, gen);
  auto fused = [](const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& c) {
    return veil::scaled_dot_product_attention(a, b, c);
  };
  auto reference = [](const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& c) {
    return attention::reference_attention(a, b, c).output;
  };
  auto expect = [&](const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& c, const std::string& part) {
    REQUIRE_THROWS_MATCHES(fused(a, b, c), veil::ShapeError, MessageContains(part));
    REQUIRE_THROWS_MATCHES(reference(a, b, c), veil::ShapeError, MessageContains(part));
  };
  REQUIRE_NOTHROW(fused(q, k, v));
  expect(veil::randn<float>({4, 6, 8}, gen), k, v, "q must be [B, H, Lq, D], got rank 3 shape [4, 6, 8]");
  expect(q, veil::randn<float>({2, 2, 7, 8, 1}, gen), v, "k must be [B, Hkv, Lk, D], got rank 5");
  expect(q, k, veil::randn<float>({7, 5}, gen), "v must be [B, Hkv, Lk, Dv], got rank 2");
  expect(q, veil::randn<float>({3, 2, 7, 8}, gen), v, "batch sizes differ: expected k and v to have q's batch size 2");
  expect(q, veil::randn<float>({3, 2, 7, 8}, gen), v, "got q [2, 4, 6, 8], k [3, 2, 7, 8], v [2, 2, 7, 5]");
  expect(q, k, veil::randn<float>({1, 2, 7, 5}, gen), "[1, 2, 7, 5]");
  expect(veil::randn<float>({2, 3, 6, 8}, gen), k, v, "q has 3 heads, which is not a multiple of k's 2 heads");
  expect(q, veil::randn<float>({2, 3, 7, 8}, gen), veil::randn<float>({2, 3, 7, 5}, gen), "not a multiple of k's 3 heads");
  expect(q, k, veil::randn<float>({2, 1, 7, 5}, gen), "k has 2 heads but v has 1");
  expect(q, veil::randn<float>({2, 2, 7, 4}, gen), v, "q has head dim 8 but k has 4");
  expect(q, k, veil::randn<float>({2, 2, 9, 5}, gen), "k has 7 keys but v has 9");
}

TEST_CASE("Dropout outside [0, 1), dropout without a generator and a NaN scale throw ValueError",
          "[attention][errors][options]") {
  const auto in = inputs();
  veil::Generator gen(3);
  attention::AttentionOptions options;
  options.generator = &gen;
  options.dropout = 1.0;
  require_error<veil::ValueError>(in, options, {"dropout must be in [0, 1), got 1"});
  options.dropout = -0.25;
  require_error<veil::ValueError>(in, options, {"dropout must be in [0, 1), got -0.25"});
  options.dropout = std::numeric_limits<double>::quiet_NaN();
  require_error<veil::ValueError>(in, options, {"dropout must be in [0, 1)"});
  options.dropout = 0.5;
  options.generator = nullptr;
  require_error<veil::ValueError>(in, options, {"dropout 0.5 > 0 needs options.generator"});
  options.dropout = 0.0;
  options.scale = std::numeric_limits<double>::quiet_NaN();
  require_error<veil::ValueError>(in, options, {"scale must be finite, got nan"});
  options.scale = std::numeric_limits<double>::infinity();
  require_error<veil::ValueError>(in, options, {"scale must be finite, got inf"});
  options.scale = -0.5;  // negative scales are valid (PyTorch #105190)
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::none(), options));
}

TEST_CASE("A failed call leaves the generator and the inputs untouched", "[attention][errors]") {
  auto in = inputs();
  veil::Generator gen(4);
  attention::AttentionOptions options;
  options.generator = &gen;
  options.dropout = 0.2;
  const auto q_before = in.q.to_vector();
  // The mask error is found before the dropout seed is drawn.
  REQUIRE_THROWS_AS(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask::key_padding({1}), options), veil::MaskError);
  CHECK(in.q.to_vector() == q_before);
  CHECK(gen.counter() == 0);
}

TEST_CASE("Masks and attention inputs of the wrong element type do not compile", "[attention][errors][types]") {
  // PyTorch has to reject uint8 / int64 padding masks and mixed q/k/v dtypes at run time; here the
  // element type is part of the tensor type, so these calls are compile errors, checked here as
  // concepts (a true result would mean the call compiles).
  STATIC_REQUIRE(AllowTakes<Tensor<bool>>);
  STATIC_REQUIRE(ForbidTakes<Tensor<bool>>);
  STATIC_REQUIRE_FALSE(AllowTakes<Tensor<std::uint8_t>>);
  STATIC_REQUIRE_FALSE(AllowTakes<Tensor<std::int64_t>>);
  STATIC_REQUIRE_FALSE(AllowTakes<Tensor<float>>);
  STATIC_REQUIRE_FALSE(ForbidTakes<Tensor<std::int32_t>>);
  STATIC_REQUIRE_FALSE(ForbidTakes<Tensor<double>>);
  STATIC_REQUIRE(AdditiveTakes<Tensor<float>>);
  STATIC_REQUIRE(AdditiveTakes<Tensor<double>>);
  STATIC_REQUIRE_FALSE(AdditiveTakes<Tensor<bool>>);
  STATIC_REQUIRE_FALSE(AdditiveTakes<Tensor<std::int64_t>>);
  STATIC_REQUIRE(AttentionTakes<Tensor<float>, Tensor<float>, Tensor<float>>);
  STATIC_REQUIRE(AttentionTakes<Tensor<double>, Tensor<double>, Tensor<double>>);
  STATIC_REQUIRE_FALSE(AttentionTakes<Tensor<float>, Tensor<double>, Tensor<float>>);
  STATIC_REQUIRE_FALSE(AttentionTakes<Tensor<float>, Tensor<float>, Tensor<double>>);
  STATIC_REQUIRE_FALSE(AttentionTakes<Tensor<double>, Tensor<float>, Tensor<float>>);
}

#include <veil/attention.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

using veil::Index;
using veil::Tensor;
using veil::attention::check_masked_inputs_unread;
using veil::attention::check_masked_inputs_unread_with;
using veil::attention::CheckResult;
namespace mask = veil::mask;

namespace {

template <class T>
struct Inputs {
  Tensor<T> q, k, v;
};

// B = 2, H = 4, Hkv = 2 (grouped-query), D = 8, Dv = 6.
template <class T>
Inputs<T> make_inputs(Index query_length, Index key_length, std::uint64_t seed = 7) {
  veil::Generator gen(seed);
  return {veil::randn<T>({2, 4, query_length, 8}, gen), veil::randn<T>({2, 2, key_length, 8}, gen),
          veil::randn<T>({2, 2, key_length, 6}, gen)};
}

// The textbook unfused attention many implementations use: scores -> masked_fill(-inf) ->
// softmax -> matmul with V. The masked_fill protects the softmax, but P·V still reads every
// value row: a masked probability is an exact 0, and 0 · NaN is NaN, so a NaN in a value row that
// no query keeps reaches the output. veil's reference path zeroes such rows first; this one does
// not, which makes it an honest, real-world leak for the checker to find.
template <class T>
Tensor<T> masked_fill_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const mask::Mask& m,
                                const veil::attention::AttentionOptions&) {
  const Index B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2);
  const T scale = T(1) / std::sqrt(static_cast<T>(q.size(3)));
  const Tensor<bool> keep = mask::materialize<T>(m, B, H, Lq, Lk);
  const Tensor<T> keys = veil::attention::detail::repeat_kv_heads(k, H / k.size(1));
  const Tensor<T> values = veil::attention::detail::repeat_kv_heads(v, H / v.size(1));
  Tensor<T> scores = veil::matmul(q, veil::transpose(keys, -1, -2)) * scale;
  scores = veil::where(keep, scores, veil::full<T>({}, -std::numeric_limits<T>::infinity()));
  return veil::matmul(veil::softmax(scores, -1), values);
}

}  // namespace

namespace {

using NamedMasks = std::vector<std::pair<std::string, mask::Mask>>;

// Masks that keep one interval of keys per query row (geometry 9 x 9 unless the name says "wide",
// 5 x 11); `poisons` says whether the mask leaves anything unread.
NamedMasks structured_masks() {
  return {{"none", mask::none()},
          {"causal", mask::causal()},  // the last query keeps every key: nothing unread
          {"wide causal_top_left", mask::causal_top_left()},  // keys 5..10 are kept by no query
          {"causal & sliding_window(2, 0)", mask::causal() & mask::sliding_window(2, 0)},
          {"wide sliding_window(1, 1)", mask::sliding_window(1, 1)},
          {"key_padding({6, 3})", mask::key_padding({6, 3})},
          {"key_padding({0, 4})", mask::key_padding({0, 4})},  // batch row 0 keeps nothing: output 0
          {"documents({4, 0, 5}) & causal", mask::documents({4, 0, 5}) & mask::causal()},
          {"documents per row & key_padding", mask::documents({{4, 5}, {9}}) & mask::key_padding({9, 2})}};
}

// Dense, custom and additive masks, alone and composed (geometry 9 x 9).
template <class T>
NamedMasks dense_masks() {
  // [B, 1, 1, Lk]: batch row 0 drops keys 2 and 7, batch row 1 keeps only key 0.
  std::vector<bool> keep_keys(2 * 9, true), forbid_keys(2 * 9);
  keep_keys[2] = keep_keys[7] = false;
  for (Index j = 1; j < 9; ++j) keep_keys[9 + j] = false;
  for (std::size_t e = 0; e < keep_keys.size(); ++e) forbid_keys[e] = !keep_keys[e];

  veil::Generator gen(11);
  // [Lq, Lk] bias with a -inf entry per row: those entries define the mask and are never poisoned.
  Tensor<T> bias = veil::randn<T>({9, 9}, gen);
  for (Index i = 0; i < 9; ++i) bias.data()[i * 9 + (i + 4) % 9] = -std::numeric_limits<T>::infinity();
  // [B, 1, 1, Lk], broadcast over heads and queries: an entry is poisoned only when its key is cut
  // for every query and head of its batch row. This one requires grad, so dBias is compared too.
  Tensor<T> per_key = veil::randn<T>({2, 1, 1, 9}, gen);
  per_key.set_requires_grad(true);

  return {{"allow [B, 1, 1, Lk]", mask::allow(veil::from_vector<bool>(keep_keys, {2, 1, 1, 9}))},
          {"forbid [B, 1, 1, Lk]", mask::forbid(veil::from_vector<bool>(forbid_keys, {2, 1, 1, 9}))},
          {"custom", mask::custom([](Index, Index, Index i, Index j) { return (i + j) % 3 != 0 && j < 7; })},
          // Heads 0 and 1 share kv head 0: a key is unread only if neither of them keeps it.
          {"custom per head", mask::custom([](Index b, Index h, Index, Index j) { return j % 4 == (h + b) % 4; })},
          {"additive", mask::additive(bias)},
          {"additive & causal", mask::additive(bias) & mask::causal()},  // bias above the diagonal: NaN
          {"additive & key_padding & causal_top_left",
           mask::additive(bias) & mask::key_padding({5, 9}) & mask::causal_top_left()},
          {"additive [B, 1, 1, Lk] & key_padding", mask::additive(per_key) & mask::key_padding({4, 7})},
          // An | keeps the union: bias entries kept by either side stay readable.
          {"(additive & causal) | sliding_window(0, 1)",
           (mask::additive(bias) & mask::causal()) | mask::sliding_window(0, 1)}};
}

template <class T>
CheckResult check_named(const std::string& name, const mask::Mask& m, bool reference) {
  const auto in = name.rfind("wide", 0) == 0 ? make_inputs<T>(5, 11) : make_inputs<T>(9, 9);
  if (!reference) return check_masked_inputs_unread(in.q, in.k, in.v, m);
  return check_masked_inputs_unread_with(
      [](const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const mask::Mask& mm,
         const veil::attention::AttentionOptions& o) { return veil::attention::reference_attention(q, k, v, mm, o); },
      in.q, in.k, in.v, m);
}

}  // namespace

TEMPLATE_TEST_CASE("check_masked_inputs_unread passes the fused op on structured masks", "[attention][checks]", float,
                   double) {
  using T = TestType;
  for (const auto& [name, m] : structured_masks()) {
    const CheckResult result = check_named<T>(name, m, /*reference=*/false);
    INFO(name << ": " << result.message);
    CHECK(result.passed);
  }
  // Lq > Lk: rows 0..3 keep nothing under bottom-right causal.
  const auto tall = make_inputs<T>(9, 5);
  CHECK(check_masked_inputs_unread(tall.q, tall.k, tall.v, mask::causal()).passed);

  // Dropout: both runs draw the same pattern from a copy of the caller's generator.
  const auto in = make_inputs<T>(9, 9);
  veil::Generator dropout_gen(5);
  veil::attention::AttentionOptions options;
  options.dropout = 0.25;
  options.generator = &dropout_gen;
  const CheckResult dropped = check_masked_inputs_unread(in.q, in.k, in.v, mask::key_padding({6, 3}), options);
  INFO(dropped.message);
  CHECK(dropped.passed);
  CHECK(dropped.message.find("vacuously") == std::string::npos);
  CHECK(dropout_gen.counter() == 0);  // the caller's generator is left where it was
}

TEMPLATE_TEST_CASE("check_masked_inputs_unread passes the reference path on every mask kind", "[attention][checks]",
                   float, double) {
  using T = TestType;
  // The reference path replaces unread key/value rows by 0 and selects masked scores to -inf, so
  // it meets the contract bit for bit: this validates the checker's notion of "masked" on every
  // kind, including custom predicates and broadcast additive biases.
  NamedMasks masks = structured_masks();
  for (auto& named : dense_masks<T>()) masks.push_back(std::move(named));
  Index poisoned_checks = 0;
  for (const auto& [name, m] : masks) {
    const CheckResult result = check_named<T>(name, m, /*reference=*/true);
    INFO(name << ": " << result.message);
    CHECK(result.passed);
    poisoned_checks += result.message.find("vacuously") == std::string::npos ? 1 : 0;
  }
  CHECK(poisoned_checks >= 12);  // most masks leave something unread: the check is not vacuous
}

// Dense, custom and additive masks are not one key interval per row, so partial tiles are not
// trimmed: unread NaN rows sit inside the GEMM's operand and must be zeroed without changing the
// product's summation order.
TEMPLATE_TEST_CASE("check_masked_inputs_unread passes the fused op on dense, custom and additive masks",
                   "[attention][checks]", float, double) {
  using T = TestType;
  for (const auto& [name, m] : dense_masks<T>()) {
    const CheckResult result = check_named<T>(name, m, /*reference=*/false);
    INFO(name << ": " << result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("check_masked_inputs_unread detects a real leak", "[attention][checks]") {
  const auto in = make_inputs<double>(6, 10);
  // key_padding({6, 10}) leaves keys 6..9 of batch row 0 unread; masked_fill attention multiplies
  // their NaN values by exact zeros and gets NaN.
  const CheckResult leaky =
      check_masked_inputs_unread_with(masked_fill_attention<double>, in.q, in.k, in.v, mask::key_padding({6, 10}));
  INFO(leaky.message);
  CHECK_FALSE(leaky.passed);
  CHECK_FALSE(static_cast<bool>(leaky));
  CHECK(leaky.message.find("FAILED with 8 masked key/value rows and 0 masked bias entries set to NaN") !=
        std::string::npos);  // 4 keys x 2 kv heads of batch row 0
  CHECK(leaky.message.find("output [2, 4, 6, 6] differs") != std::string::npos);
  CHECK(leaky.message.find("nan with masked entries set to NaN") != std::string::npos);

  // With no key left unread, the same implementation has nothing to leak (the check says so).
  const CheckResult nothing_masked =
      check_masked_inputs_unread_with(masked_fill_attention<double>, in.q, in.k, in.v, mask::causal());
  INFO(nothing_masked.message);
  CHECK(nothing_masked.passed);
  CHECK(nothing_masked.message.find("vacuously") != std::string::npos);
}

TEST_CASE("compare_bitwise reports the first differing entry, and tells NaN payloads and -0 apart",
          "[attention][checks]") {
  using veil::attention::detail::compare_bitwise;
  const auto a = veil::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(compare_bitwise<float>("x", a, a.contiguous()).passed);
  CHECK(compare_bitwise<float>("x", Tensor<float>(), Tensor<float>()).passed);

  const auto b = veil::from_vector<float>({1, 2, 3, 4, std::numeric_limits<float>::quiet_NaN(), 0}, {2, 3});
  const CheckResult differ = compare_bitwise<float>("grad of k", a, b);
  CHECK_FALSE(differ.passed);
  CHECK(differ.message == "grad of k [2, 3] differs in 2 of 6 entries; first at [1, 1]: 5 with the inputs as given, "
                          "nan with masked entries set to NaN");

  // +0 and -0 compare equal as numbers but not as bits: a masked entry that flips a sign is caught.
  const auto zero = veil::from_vector<float>({0.0f}, {1}), minus_zero = veil::from_vector<float>({-0.0f}, {1});
  CHECK_FALSE(compare_bitwise<float>("output", zero, minus_zero).passed);
  CHECK_FALSE(compare_bitwise<float>("output", a, veil::reshape(a, {6})).passed);
  CHECK_FALSE(compare_bitwise<float>("grad of v", a, Tensor<float>()).passed);
}

TEST_CASE("check_masked_inputs_unread validates its inputs like the attention call", "[attention][checks]") {
  const auto in = make_inputs<float>(4, 4);
  REQUIRE_THROWS_AS(check_masked_inputs_unread(in.q, in.k, in.v, mask::key_padding({5, 1})), veil::MaskError);
  REQUIRE_THROWS_AS(check_masked_inputs_unread(in.q, in.k, in.v, mask::additive(veil::zeros<double>({4, 4}))),
                    veil::MaskError);
  REQUIRE_THROWS_AS(check_masked_inputs_unread(in.q, veil::zeros<float>({2, 3, 4, 8}), in.v), veil::ShapeError);
  // Runs inside a NoGradGuard too (the check needs its own backward).
  veil::NoGradGuard no_grad;
  CHECK(check_masked_inputs_unread(in.q, in.k, in.v, mask::key_padding({2, 4})).passed);
}

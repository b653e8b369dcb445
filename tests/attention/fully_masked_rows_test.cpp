// Fully masked rows (DESIGN.md, "Masks"): output exactly 0, logsumexp -inf, zero gradient, never
// NaN; with fully_masked_rows = throw_error, a MaskError naming the rows.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

struct Scenario {
  std::string name;
  Index B, H, Hkv, Lq, Lk, D, Dv;
  mask::Mask mask;
  std::function<bool(Index b, Index h, Index i)> dead_row;  // the hand-derived fully masked rows
};

template <class T>
void check_scenario(const Scenario& s, bool reference) {
  veil::Generator gen(11);
  auto q = veil::randn<T>({s.B, s.H, s.Lq, s.D}, gen).set_requires_grad(true);
  auto k = veil::randn<T>({s.B, s.Hkv, s.Lk, s.D}, gen).set_requires_grad(true);
  auto v = veil::randn<T>({s.B, s.Hkv, s.Lk, s.Dv}, gen).set_requires_grad(true);
  auto grad_out = veil::randn<T>({s.B, s.H, s.Lq, s.Dv}, gen);
  const auto result = reference ? attention::reference_attention(q, k, v, s.mask)
                                : attention::scaled_dot_product_attention_with_logsumexp(q, k, v, s.mask);
  result.output.backward(grad_out);
  INFO(s.name << (reference ? " (reference)" : " (fused)"));

  // The hand-derived dead rows agree with materialize.
  const auto keep = mask::materialize<T>(s.mask, s.B, s.H, s.Lq, s.Lk);
  Index dead_rows = 0;
  std::vector<Index> kept_keys;  // per (b, h, i)
  for (Index b = 0; b < s.B; ++b)
    for (Index h = 0; h < s.H; ++h)
      for (Index i = 0; i < s.Lq; ++i) {
        Index count = 0;
        for (Index j = 0; j < s.Lk; ++j) count += keep.data()[((b * s.H + h) * s.Lq + i) * s.Lk + j] ? 1 : 0;
        const bool any = count > 0;
        kept_keys.push_back(count);
        REQUIRE(any == !s.dead_row(b, h, i));
        dead_rows += any ? 0 : 1;
      }
  REQUIRE(dead_rows > 0);

  const auto out = result.output.to_vector(), lse = result.logsumexp.to_vector();
  const auto dq = q.grad().to_vector(), dk = k.grad().to_vector(), dv = v.grad().to_vector();
  for (auto* values : {&out, &lse, &dq, &dk, &dv})
    for (T x : *values) REQUIRE(!std::isnan(x));
  Index checked = 0;
  for (Index b = 0; b < s.B; ++b)
    for (Index h = 0; h < s.H; ++h)
      for (Index i = 0; i < s.Lq; ++i) {
        const Index row = (b * s.H + h) * s.Lq + i;
        if (s.dead_row(b, h, i)) {
          CHECK(lse[row] == -std::numeric_limits<T>::infinity());
          for (Index d = 0; d < s.Dv; ++d) CHECK(out[row * s.Dv + d] == T(0));
          for (Index d = 0; d < s.D; ++d) CHECK(dq[row * s.D + d] == T(0));
          ++checked;
        } else if (kept_keys[static_cast<std::size_t>(row)] >= 2) {  // one kept key: softmax is constant, dq = 0
          CHECK(std::isfinite(lse[row]));
          bool nonzero = false;
          for (Index d = 0; d < s.D; ++d) nonzero = nonzero || dq[row * s.D + d] != T(0);
          CHECK(nonzero);  // live rows do get a gradient (the test is not vacuous)
        }
      }
  CHECK(checked == dead_rows);
}

std::vector<Scenario> scenarios() {
  std::vector<Scenario> list;
  {  // Every 4th query row fully masked by an allow mask; the others keep a sparse pattern.
    const Index B = 2, Lq = 70, Lk = 140;
    Tensor<bool> allowed = veil::zeros<bool>({B, 1, Lq, Lk});
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j) allowed.data()[(b * Lq + i) * Lk + j] = i % 4 != 0 && (i * 5 + j + b) % 3 == 0;
    list.push_back({"allow: every 4th row fully masked", B, 4, 2, Lq, Lk, 8, 6, mask::allow(allowed),
                    [](Index, Index, Index i) { return i % 4 == 0; }});
  }
  // Packed cross-attention where sequence 1 has 30 queries and 0 keys.
  list.push_back({"documents_from_offsets({0, 10, 40, 70}, {0, 50, 50, 140})", 1, 2, 1, 70, 140, 8, 8,
                  mask::documents_from_offsets({0, 10, 40, 70}, {0, 50, 50, 140}),
                  [](Index, Index, Index i) { return i >= 10 && i < 40; }});
  // Zero-length documents combined with causal: sequence {} in the middle, and one at the end of keys.
  list.push_back({"documents_from_offsets({0, 20, 20, 65}, {0, 30, 60, 60}) & causal()", 1, 1, 1, 65, 60, 4, 4,
                  mask::documents_from_offsets({0, 20, 20, 65}, {0, 30, 60, 60}) & mask::causal(),
                  // shift = -5: sequence 0 (queries 0..19, keys 0..29) keeps j <= i - 5, so rows
                  // 0..4 are empty too; sequence 2 (queries 20..64) has no keys.
                  [](Index, Index, Index i) { return i < 5 || i >= 20; }});
  // key_padding with length 0 for batch row 1.
  list.push_back({"key_padding({130, 0, 1})", 3, 2, 2, 33, 130, 8, 8, mask::key_padding({130, 0, 1}),
                  [](Index b, Index, Index) { return b == 1; }});
  // causal (bottom-right) with Lq > Lk: the first Lq - Lk rows keep nothing.
  list.push_back({"causal(), Lq = 100 > Lk = 30", 1, 2, 1, 100, 30, 16, 16, mask::causal(),
                  [](Index, Index, Index i) { return i < 70; }});
  // Every key padded away in every batch row.
  list.push_back({"key_padding({0, 0})", 2, 2, 1, 9, 140, 8, 8, mask::key_padding({0, 0}),
                  [](Index, Index, Index) { return true; }});
  {  // Document ids that are neither monotone nor contiguous (FlexAttention's document mask), as a
     // custom predicate: query i attends to keys of its own document; document 3 owns queries but
     // no key, so its rows keep nothing.
    const auto query_document = [](Index i) -> Index { return i % 5 == 4 ? 3 : (i * 7) % 3; };
    const auto key_document = [](Index j) -> Index { return (j / 3) % 3; };
    list.push_back({"custom: non-monotone document ids, document 3 without keys", 1, 2, 2, 40, 70, 8, 8,
                    mask::custom([=](Index, Index, Index i, Index j) { return query_document(i) == key_document(j); }),
                    [=](Index, Index, Index i) { return query_document(i) == 3; }});
  }
  return list;
}

/// Extents of one attention call with at least one of them zero (or a zero head dim).
struct EmptyCase {
  const char* name;
  Index B, H, Hkv, Lq, Lk, D, Dv;
};

const EmptyCase empty_cases[] = {
    {"no keys (Lk = 0)", 2, 2, 1, 5, 0, 4, 3},
    {"no keys, 70 queries (more than one query tile)", 1, 1, 1, 70, 0, 8, 8},
    {"no queries (Lq = 0)", 2, 2, 1, 0, 7, 4, 3},
    {"no queries and no keys", 2, 2, 1, 0, 0, 4, 3},
    {"empty batch (B = 0)", 0, 2, 1, 5, 7, 4, 3},
    {"no query heads (H = 0)", 2, 0, 1, 5, 7, 4, 3},
    {"head dim 0 (D = 0)", 2, 2, 1, 5, 7, 0, 3},
    {"value dim 0 (Dv = 0)", 2, 2, 1, 5, 7, 4, 0},
};

template <class T>
bool all_equal_to(const Tensor<T>& x, T value) {
  for (T e : x.to_vector())
    if (!(e == value)) return false;
  return true;
}

/// One zero-size call through the fused kernel or the reference, forward and backward: every
/// result has the documented shape, nothing is NaN, rows without keys are 0 with logsumexp -inf,
/// and every gradient that has no path to a kept edge is exactly 0.
template <class T>
void check_empty_case(const EmptyCase& c, bool reference) {
  veil::Generator gen(21);
  auto q = veil::randn<T>({c.B, c.H, c.Lq, c.D}, gen).set_requires_grad(true);
  auto k = veil::randn<T>({c.B, c.Hkv, c.Lk, c.D}, gen).set_requires_grad(true);
  auto v = veil::randn<T>({c.B, c.Hkv, c.Lk, c.Dv}, gen).set_requires_grad(true);
  auto bias = veil::randn<T>({c.Lq, c.Lk}, gen).set_requires_grad(true);
  const auto grad_out = veil::randn<T>({c.B, c.H, c.Lq, c.Dv}, gen);
  std::vector<Index> no_keys(static_cast<std::size_t>(c.B), 0);
  struct Masked {
    const char* name;
    mask::Mask mask;
    bool keeps_nothing;
  };
  const Masked masks[] = {
      {"none()", mask::none(), false},
      {"causal()", mask::causal(), false},
      {"causal_top_left()", mask::causal_top_left(), false},
      {"sliding_window(2, 1)", mask::sliding_window(2, 1), false},
      {"documents_from_offsets({0, Lq}, {0, Lk})", mask::documents_from_offsets({0, c.Lq}, {0, c.Lk}), false},
      {"allow(ones [Lq, Lk])", mask::allow(veil::ones<bool>({c.Lq, c.Lk})), false},
      {"additive(bias [Lq, Lk])", mask::additive(bias), false},
      {"key_padding(0 for every row)", mask::key_padding(no_keys), true},
  };
  for (const auto& m : masks) {
    INFO(c.name << ", " << m.name << (reference ? " (reference)" : " (fused)"));
    q.zero_grad(), k.zero_grad(), v.zero_grad(), bias.zero_grad();
    const auto result = reference ? attention::reference_attention(q, k, v, m.mask)
                                  : attention::scaled_dot_product_attention_with_logsumexp(q, k, v, m.mask);
    REQUIRE(result.output.shape() == veil::Shape{c.B, c.H, c.Lq, c.Dv});
    REQUIRE(result.logsumexp.shape() == veil::Shape{c.B, c.H, c.Lq});
    result.output.backward(grad_out);
    REQUIRE(q.grad().shape() == q.shape());
    REQUIRE(k.grad().shape() == k.shape());
    REQUIRE(v.grad().shape() == v.shape());
    for (const Tensor<T>& t : {result.output, result.logsumexp, q.grad(), k.grad(), v.grad()})
      for (T e : t.to_vector()) REQUIRE(!std::isnan(e));

    const bool no_edge = m.keeps_nothing || c.Lk == 0;
    if (no_edge) {
      CHECK(all_equal_to(result.output, T(0)));
      CHECK(all_equal_to(result.logsumexp, -std::numeric_limits<T>::infinity()));
    }
    // dq needs a kept edge and a value to differentiate; dk and dv need a query too.
    const bool nothing_flows = no_edge || c.Lq == 0 || c.H == 0 || c.B == 0 || c.Dv == 0;
    if (nothing_flows) {
      CHECK(all_equal_to(q.grad(), T(0)));
      CHECK(all_equal_to(k.grad(), T(0)));
    }
    if (no_edge || c.Lq == 0 || c.H == 0 || c.B == 0) CHECK(all_equal_to(v.grad(), T(0)));
    if (bias.grad().defined()) {
      REQUIRE(bias.grad().shape() == bias.shape());
      if (nothing_flows) CHECK(all_equal_to(bias.grad(), T(0)));
    }

    if (c.D == 0 && !m.keeps_nothing && m.mask.is_none()) {
      // No features: every score is 0 and the weights are uniform, so each output row is the
      // mean of the values (1/sqrt(D) is not formed: the default scale uses max(D, 1)).
      const auto out = result.output.to_vector(), values = v.to_vector();
      const Index G = c.H / c.Hkv;
      for (Index b = 0; b < c.B; ++b)
        for (Index h = 0; h < c.H; ++h)
          for (Index i = 0; i < c.Lq; ++i)
            for (Index d = 0; d < c.Dv; ++d) {
              double mean = 0;
              for (Index j = 0; j < c.Lk; ++j) mean += values[((b * c.Hkv + h / G) * c.Lk + j) * c.Dv + d];
              mean /= static_cast<double>(c.Lk);
              CHECK(out[((b * c.H + h) * c.Lq + i) * c.Dv + d] == Approx(mean).margin(1e-6));
            }
    }
  }
}

}  // namespace

TEST_CASE("Fully masked rows give output 0, logsumexp -inf, zero dq and no NaN in the fused kernel",
          "[attention][fully_masked]") {
  for (const auto& s : scenarios()) {
    check_scenario<float>(s, false);
    check_scenario<double>(s, false);
  }
}

TEST_CASE("Fully masked rows give output 0, logsumexp -inf, zero dq and no NaN in the reference",
          "[attention][fully_masked][reference]") {
  for (const auto& s : scenarios()) check_scenario<float>(s, true);
}

TEST_CASE("A fully masked row with an additive bias requiring grad gives a zero and finite bias gradient",
          "[attention][fully_masked][additive]") {
  veil::Generator gen(3);
  const Index Lq = 6, Lk = 9;
  auto q = veil::randn<float>({1, 1, Lq, 4}, gen).set_requires_grad(true);
  auto k = veil::randn<float>({1, 1, Lk, 4}, gen);
  auto v = veil::randn<float>({1, 1, Lk, 4}, gen);
  auto bias = veil::randn<float>({Lq, Lk}, gen);
  for (Index j = 0; j < Lk; ++j) bias.data()[2 * Lk + j] = -std::numeric_limits<float>::infinity();  // row 2: all -inf
  bias.set_requires_grad(true);
  auto result = attention::scaled_dot_product_attention_with_logsumexp(q, k, v, mask::additive(bias));
  veil::sum(result.output * result.output).backward();
  CHECK(result.logsumexp.to_vector()[2] == -std::numeric_limits<float>::infinity());
  const auto dbias = bias.grad().to_vector(), dq = q.grad().to_vector(), out = result.output.to_vector();
  for (Index j = 0; j < Lk; ++j) CHECK(dbias[2 * Lk + j] == 0.0f);
  for (Index d = 0; d < 4; ++d) {
    CHECK(out[2 * 4 + d] == 0.0f);
    CHECK(dq[2 * 4 + d] == 0.0f);
  }
  for (float x : dbias) CHECK(std::isfinite(x));
}

TEST_CASE("fully_masked_rows = throw_error throws a MaskError naming the rows", "[attention][fully_masked][errors]") {
  veil::Generator gen(4);
  auto q = veil::randn<float>({2, 2, 6, 4}, gen);
  auto k = veil::randn<float>({2, 2, 5, 4}, gen);
  auto v = veil::randn<float>({2, 2, 5, 4}, gen);
  attention::AttentionOptions options;
  options.fully_masked_rows = attention::FullyMaskedRows::throw_error;
  // key_padding({5, 0}): every row of batch row 1 (2 heads x 6 queries = 12 rows) keeps nothing.
  const auto padding = mask::key_padding({5, 0});
  REQUIRE_THROWS_AS(veil::scaled_dot_product_attention(q, k, v, padding, options), veil::MaskError);
  REQUIRE_THROWS_MATCHES(veil::scaled_dot_product_attention(q, k, v, padding, options), veil::MaskError,
                         veil_test::MessageContains("12 query rows keep no key"));
  REQUIRE_THROWS_MATCHES(veil::scaled_dot_product_attention(q, k, v, padding, options), veil::MaskError,
                         veil_test::MessageContains("(b=1, h=0, i=0)"));
  REQUIRE_THROWS_MATCHES(attention::reference_attention(q, k, v, padding, options), veil::MaskError,
                         veil_test::MessageContains("(b=1, h=0, i=0)"));
  // causal with Lq = 6 > Lk = 5: row 0 of every (b, h) keeps nothing.
  REQUIRE_THROWS_MATCHES(veil::scaled_dot_product_attention(q, k, v, mask::causal(), options), veil::MaskError,
                         veil_test::MessageContains("4 query rows keep no key: (b=0, h=0, i=0), (b=0, h=1, i=0)"));
  // The same calls without fully masked rows do not throw, and the default option does not throw.
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(q, k, v, mask::key_padding({5, 1}), options));
  REQUIRE_NOTHROW(veil::scaled_dot_product_attention(q, k, v, padding));
}

TEST_CASE("Zero-length sequences, empty batches and heads, and zero head dims give shaped outputs and zero gradients",
          "[attention][fully_masked][zero_size]") {
  for (const auto& c : empty_cases) {
    check_empty_case<float>(c, false);
    check_empty_case<double>(c, false);
    check_empty_case<float>(c, true);
  }
}

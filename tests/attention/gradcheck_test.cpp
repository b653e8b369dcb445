// gradcheck (central differences in double) of the fused attention for every mask kind, GQA, an
// additive bias that requires grad, and dropout with a generator re-created inside the function.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <functional>
#include <limits>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

using Inputs = std::vector<Tensor<double>>;

struct Shape4 {
  Index B = 2, H = 2, Hkv = 1, Lq = 5, Lk = 7, D = 3, Dv = 2;
};

Tensor<bool> pattern(Index B, Index Lq, Index Lk, bool value_when_kept) {
  Tensor<bool> t = veil::zeros<bool>({B, 1, Lq, Lk});
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) {
        const bool keep = (i * 3 + j * 5 + b) % 4 != 0;
        t.data()[(b * Lq + i) * Lk + j] = keep == value_when_kept;
      }
  return t;
}

/// gradcheck of the fused op; `make` builds the mask from the inputs (inputs[3] is an optional bias).
void check(const std::string& name, const Shape4& s, const std::function<mask::Mask(const Inputs&)>& make,
           bool with_bias = false, double dropout = 0.0) {
  veil::Generator gen(31);
  Inputs in{veil::randn<double>({s.B, s.H, s.Lq, s.D}, gen).set_requires_grad(true),
            veil::randn<double>({s.B, s.Hkv, s.Lk, s.D}, gen).set_requires_grad(true),
            veil::randn<double>({s.B, s.Hkv, s.Lk, s.Dv}, gen).set_requires_grad(true)};
  if (with_bias) {
    auto bias = veil::randn<double>({s.B, 1, s.Lq, s.Lk}, gen);
    bias.data()[3] = -std::numeric_limits<double>::infinity();  // one cut edge inside the bias
    in.push_back(bias.set_requires_grad(true));
  }
  auto fn = [&](const Inputs& x) {
    attention::AttentionOptions options;
    veil::Generator dropout_gen(2024);  // re-created: every evaluation draws the same dropout mask
    if (dropout > 0) options.dropout = dropout, options.generator = &dropout_gen;
    return veil::scaled_dot_product_attention(x[0], x[1], x[2], make(x), options);
  };
  const auto result = veil::gradcheck(fn, in);
  INFO(name << ": " << result.message);
  CHECK(result.passed);
  // The check is not vacuous: the fused op gives a nonzero gradient for q, k and v.
  auto out = fn(in);
  veil::sum(out * out).backward();
  for (int t = 0; t < 3; ++t) {
    bool nonzero = false;
    for (double g : in[static_cast<std::size_t>(t)].grad().to_vector()) nonzero = nonzero || g != 0;
    CHECK(nonzero);
  }
}

}  // namespace

TEST_CASE("gradcheck passes for structured masks", "[attention][gradcheck]") {
  const Shape4 s;
  check("none", s, [](const Inputs&) { return mask::none(); });
  check("causal (Lq < Lk)", s, [](const Inputs&) { return mask::causal(); });
  check("causal (Lq > Lk)", Shape4{2, 2, 1, 7, 5, 3, 2}, [](const Inputs&) { return mask::causal(); });
  check("causal_top_left", s, [](const Inputs&) { return mask::causal_top_left(); });
  check("sliding_window(1, 1)", s, [](const Inputs&) { return mask::sliding_window(1, 1); });
  check("key_padding({7, 2})", s, [](const Inputs&) { return mask::key_padding({7, 2}); });
  check("key_padding({4, 0}) (fully masked batch row)", s, [](const Inputs&) { return mask::key_padding({4, 0}); });
  check("documents({2, 3}) & causal", Shape4{2, 2, 1, 5, 5, 3, 2},
        [](const Inputs&) { return mask::documents({2, 3}) & mask::causal(); });
  check("documents(per row)", Shape4{2, 2, 1, 5, 5, 3, 2},
        [](const Inputs&) { return mask::documents(std::vector<std::vector<Index>>{{5}, {1, 0, 4}}); });
  check("documents_from_offsets(q, k)", s, [](const Inputs&) { return mask::documents_from_offsets({0, 2, 5}, {0, 4, 7}); });
  check("causal | key_padding (prefix LM)", s, [](const Inputs&) { return mask::causal() | mask::key_padding({4, 1}); });
}

TEST_CASE("gradcheck passes for dense, custom and additive masks", "[attention][gradcheck]") {
  const Shape4 s;
  const auto allowed = pattern(s.B, s.Lq, s.Lk, true), forbidden = pattern(s.B, s.Lq, s.Lk, false);
  check("allow", s, [allowed](const Inputs&) { return mask::allow(allowed); });
  check("forbid", s, [forbidden](const Inputs&) { return mask::forbid(forbidden); });
  check("custom", s, [](const Inputs&) {
    return mask::custom([](Index b, Index h, Index i, Index j) { return (i + 2 * j + b + h) % 3 != 0; });
  });
  check("additive (bias requires grad)", s, [](const Inputs& x) { return mask::additive(x[3]); }, true);
  check("allow & additive (bias requires grad)", s,
        [allowed](const Inputs& x) { return mask::allow(allowed) & mask::additive(x[3]); }, true);
  check("documents & causal & additive", Shape4{2, 2, 1, 7, 7, 3, 2},
        [](const Inputs& x) { return mask::documents({3, 4}) & mask::causal() & mask::additive(x[3]); }, true);
}

TEST_CASE("gradcheck passes with grouped-query attention", "[attention][gradcheck][gqa]") {
  const Shape4 gqa{1, 4, 2, 5, 6, 3, 4};
  check("GQA none", gqa, [](const Inputs&) { return mask::none(); });
  check("GQA causal", gqa, [](const Inputs&) { return mask::causal(); });
  check("GQA additive", gqa, [](const Inputs& x) { return mask::additive(x[3]); }, true);
  check("MQA sliding window", Shape4{1, 4, 1, 6, 6, 2, 3}, [](const Inputs&) { return mask::sliding_window(2, 0); });
}

TEST_CASE("gradcheck passes with dropout and a fixed generator seed", "[attention][gradcheck][dropout]") {
  const Shape4 s;
  check("dropout 0.3, none", s, [](const Inputs&) { return mask::none(); }, false, 0.3);
  check("dropout 0.3, causal & additive", s, [](const Inputs& x) { return mask::causal() & mask::additive(x[3]); }, true,
        0.3);
}

// Attention dropout: the fused kernel and the reference draw the same per-edge dropout mask from
// the same generator seed (one draw per call), so outputs and gradients agree; about 1 - p of the
// attention weights survive, scaled by 1 / (1 - p).
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    REQUIRE(std::isfinite(a[e]));
    worst = std::max(worst, std::abs(static_cast<double>(a[e]) - b[e]));
  }
  return worst;
}

template <class T>
struct Result {
  std::vector<T> out, dq, dk, dv, dbias;
};

template <class T>
Result<T> run(bool fused, const mask::Mask& base, bool with_bias, double p, std::uint64_t seed) {
  veil::Generator data(8);
  const Index B = 2, H = 4, Hkv = 2, Lq = 70, Lk = 150, D = 8, Dv = 6;
  auto q = veil::randn<T>({B, H, Lq, D}, data).set_requires_grad(true);
  auto k = veil::randn<T>({B, Hkv, Lk, D}, data).set_requires_grad(true);
  auto v = veil::randn<T>({B, Hkv, Lk, Dv}, data).set_requires_grad(true);
  auto bias = veil::randn<T>({Lq, Lk}, data).set_requires_grad(true);
  const auto grad_out = veil::randn<T>({B, H, Lq, Dv}, data);
  veil::Generator gen(seed);
  attention::AttentionOptions options;
  options.dropout = p;
  options.generator = &gen;
  const mask::Mask m = with_bias ? base & mask::additive(bias) : base;
  const auto out = fused ? veil::scaled_dot_product_attention(q, k, v, m, options)
                         : attention::reference_attention(q, k, v, m, options).output;
  out.backward(grad_out);
  Result<T> r{out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector(), {}};
  if (with_bias) r.dbias = bias.grad().to_vector();
  CHECK(gen.counter() == 1);  // one draw per call
  return r;
}

template <class T>
void check_same(const mask::Mask& m, bool with_bias, double tolerance, const char* name) {
  const auto fused = run<T>(true, m, with_bias, 0.3, 555), reference = run<T>(false, m, with_bias, 0.3, 555);
  INFO(name);
  CHECK(max_abs_diff(fused.out, reference.out) <= tolerance);
  CHECK(max_abs_diff(fused.dq, reference.dq) <= tolerance);
  CHECK(max_abs_diff(fused.dk, reference.dk) <= tolerance);
  CHECK(max_abs_diff(fused.dv, reference.dv) <= tolerance);
  if (with_bias) CHECK(max_abs_diff(fused.dbias, reference.dbias) <= tolerance);
  // Another seed drops other weights.
  const auto other = run<T>(true, m, with_bias, 0.3, 556);
  CHECK(max_abs_diff(fused.out, other.out) > 1e-3);
}

}  // namespace

TEST_CASE("Fused and reference dropout with the same seed give the same output and gradients",
          "[attention][dropout]") {
  check_same<double>(mask::none(), false, 1e-12, "double, none");
  check_same<double>(mask::causal() & mask::key_padding({150, 90}), true, 1e-12, "double, causal & key_padding & additive");
  check_same<float>(mask::none(), false, 1e-5, "float, none");
  check_same<float>(mask::documents_from_offsets({0, 30, 70}, {0, 100, 150}) & mask::causal(), true, 1e-5,
                    "float, documents & causal & additive");
}

TEST_CASE("Dropout keeps about 1 - p of the attention weights, scaled by 1 / (1 - p)", "[attention][dropout]") {
  // q = 0 gives uniform weights 1/Lk; with one-hot values v_j = e_j the output entry (i, j) is the
  // dropped weight of edge (i, j): 0 or 1 / (Lk (1 - p)).
  const Index B = 2, H = 2, Lq = 64, Lk = 256;
  for (double p : {0.1, 0.3, 0.7}) {
    veil::Generator data(1);
    auto q = veil::zeros<double>({B, H, Lq, 8});
    auto k = veil::randn<double>({B, H, Lk, 8}, data);
    auto v = veil::zeros<double>({B, H, Lk, Lk});
    for (Index bh = 0; bh < B * H; ++bh)
      for (Index j = 0; j < Lk; ++j) v.data()[(bh * Lk + j) * Lk + j] = 1.0;
    veil::Generator gen(77);
    attention::AttentionOptions options;
    options.dropout = p;
    options.generator = &gen;
    const auto out = veil::scaled_dot_product_attention(q, k, v, mask::none(), options).to_vector();
    const double kept_value = 1.0 / (static_cast<double>(Lk) * (1.0 - p));
    Index kept = 0, odd = 0;
    for (double x : out) {
      if (x == 0.0) continue;
      ++kept;
      odd += std::abs(x - kept_value) <= 1e-12 ? 0 : 1;
    }
    const double fraction = static_cast<double>(kept) / static_cast<double>(out.size());
    INFO("p = " << p << ": kept fraction " << fraction);
    CHECK(odd == 0);
    // 65,536 edges: the standard deviation of the fraction is <= 0.002; allow 5 sigma.
    CHECK(std::abs(fraction - (1.0 - p)) <= 0.01);
  }
}

TEST_CASE("p = 0 is no dropout and each call draws a new dropout mask", "[attention][dropout]") {
  veil::Generator data(3);
  auto q = veil::randn<float>({1, 2, 20, 4}, data), k = veil::randn<float>({1, 2, 30, 4}, data);
  auto v = veil::randn<float>({1, 2, 30, 4}, data);
  veil::Generator gen(9);
  attention::AttentionOptions options;
  options.generator = &gen;
  const auto plain = veil::scaled_dot_product_attention(q, k, v).to_vector();
  CHECK(veil::scaled_dot_product_attention(q, k, v, mask::none(), options).to_vector() == plain);
  options.dropout = 0.5;
  const auto first = veil::scaled_dot_product_attention(q, k, v, mask::none(), options).to_vector();
  const auto second = veil::scaled_dot_product_attention(q, k, v, mask::none(), options).to_vector();
  CHECK(first != second);
  CHECK(gen.counter() == 2);
}

// Mask binding at the edges of the geometry, from inputs the fuzz targets (tests/fuzz) found.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <limits>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;

TEST_CASE("Dense and additive masks with no keys bind and attend without touching their empty storage",
          "[attention][mask]") {
  // [Lq, 0] and [B, 1, Lq, 0] masks: no entries at all, but Lq rows to summarise.
  const Index B = 2, H = 1, Lq = 3, Lk = 0, D = 2;
  veil::Generator gen(3);
  const auto q = veil::randn<float>({B, H, Lq, D}, gen);
  const auto k = veil::randn<float>({B, H, Lk, D}, gen);
  const auto v = veil::randn<float>({B, H, Lk, D}, gen);
  const std::vector<mask::Mask> masks = {
      mask::allow(Tensor<bool>::empty({Lq, Lk})),
      mask::forbid(Tensor<bool>::empty({B, 1, Lq, Lk})),
      mask::additive(veil::zeros<float>({Lq, Lk})),
  };
  for (const auto& m : masks) {
    const auto out = veil::scaled_dot_product_attention(q, k, v, m);
    REQUIRE(out.shape() == veil::Shape{B, H, Lq, D});
    for (float x : out.to_vector()) REQUIRE(x == 0.0f);
    const auto keep = mask::materialize(m, B, H, Lq, Lk);
    REQUIRE(keep.numel() == 0);
  }
}

TEST_CASE("A row whose only kept edges carry an additive -inf is fully masked in the reference as in the fused kernel",
          "[attention][mask]") {
  // causal() keeps (0, 0); the bias cuts key 0 for every query, so `causal | bias` leaves query 0
  // a kept edge with score -inf and nothing else: weight 0, so output 0 and zero gradient, not NaN.
  const Index Lq = 2, Lk = 2, D = 2;
  veil::Generator gen(5);
  const auto q = veil::randn<float>({1, 1, Lq, D}, gen).set_requires_grad(true);
  const auto k = veil::randn<float>({1, 1, Lk, D}, gen).set_requires_grad(true);
  const auto v = veil::randn<float>({1, 1, Lk, D}, gen).set_requires_grad(true);
  const auto bias = veil::from_vector<float>({-std::numeric_limits<float>::infinity(), -100.0f}, {Lk});
  const auto m = mask::causal() | (mask::additive(bias) & mask::causal());
  const auto grad_out = veil::randn<float>({1, 1, Lq, D}, gen);

  const auto fused = veil::scaled_dot_product_attention(q, k, v, m);
  fused.backward(grad_out);
  const auto fused_dq = q.grad().to_vector();
  q.zero_grad();
  const auto reference = veil::attention::reference_attention(q, k, v, m);
  reference.output.backward(grad_out);
  const auto reference_dq = q.grad().to_vector();

  const auto a = fused.to_vector(), b = reference.output.to_vector();
  for (std::size_t e = 0; e < a.size(); ++e) REQUIRE(b[e] == Approx(a[e]).margin(1e-5));
  REQUIRE(b[0] == 0.0f);
  REQUIRE(b[1] == 0.0f);
  REQUIRE(reference.logsumexp.to_vector()[0] == -std::numeric_limits<float>::infinity());
  for (std::size_t e = 0; e < fused_dq.size(); ++e) REQUIRE(reference_dq[e] == Approx(fused_dq[e]).margin(1e-5));
  REQUIRE(reference_dq[0] == 0.0f);
  REQUIRE(reference_dq[1] == 0.0f);
}

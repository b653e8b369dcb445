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

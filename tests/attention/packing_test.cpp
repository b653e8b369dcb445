// Packed sequences: N sequences packed into one row with documents(lengths) & causal() give the
// same outputs and gradients as running each sequence alone with causal().
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;

namespace {

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t e = 0; e < a.size(); ++e) worst = std::max(worst, std::abs(static_cast<double>(a[e]) - b[e]));
  return worst;
}

/// Rows [begin, end) of dimension 2 of a [B, H, L, X] tensor, as a contiguous leaf.
template <class T>
Tensor<T> rows_of(const Tensor<T>& x, Index begin, Index end) {
  return veil::slice(x.detach(), 2, begin, end).contiguous().detach();
}

template <class T>
void check_packing(const std::vector<Index>& lengths, Index H, Index Hkv, Index D, Index Dv, double tolerance) {
  Index L = 0;
  for (Index n : lengths) L += n;
  veil::Generator gen(1234);
  auto q = veil::randn<T>({1, H, L, D}, gen).set_requires_grad(true);
  auto k = veil::randn<T>({1, Hkv, L, D}, gen).set_requires_grad(true);
  auto v = veil::randn<T>({1, Hkv, L, Dv}, gen).set_requires_grad(true);
  const auto grad_out = veil::randn<T>({1, H, L, Dv}, gen);

  const auto packed = veil::scaled_dot_product_attention(q, k, v, mask::documents(lengths) & mask::causal());
  packed.backward(grad_out);
  const auto out = packed.to_vector(), dq = q.grad().to_vector(), dk = k.grad().to_vector(), dv = v.grad().to_vector();

  Index begin = 0;
  double worst = 0;
  for (Index n : lengths) {
    const Index end = begin + n;
    if (n == 0) continue;
    auto qs = rows_of(q, begin, end).set_requires_grad(true);
    auto ks = rows_of(k, begin, end).set_requires_grad(true);
    auto vs = rows_of(v, begin, end).set_requires_grad(true);
    const auto alone = veil::scaled_dot_product_attention(qs, ks, vs, mask::causal());
    alone.backward(rows_of(grad_out, begin, end));
    // The packed results restricted to this sequence's rows.
    auto part = [&](const std::vector<T>& all, Index heads, Index width) {
      return rows_of(veil::from_vector<T>(all, {1, heads, L, width}), begin, end).to_vector();
    };
    INFO("sequence [" << begin << ", " << end << ")");
    const double errors[] = {max_abs_diff(part(out, H, Dv), alone.to_vector()),
                             max_abs_diff(part(dq, H, D), qs.grad().to_vector()),
                             max_abs_diff(part(dk, Hkv, D), ks.grad().to_vector()),
                             max_abs_diff(part(dv, Hkv, Dv), vs.grad().to_vector())};
    for (double e : errors) {
      CHECK(e <= tolerance);
      worst = std::max(worst, e);
    }
    begin = end;
  }
  WARN("packing " << (sizeof(T) == 4 ? "float" : "double") << ", " << lengths.size()
                  << " sequences: max |packed - alone| = " << worst);
}

}  // namespace

TEST_CASE("Sequences packed with documents & causal match each sequence run alone (float)",
          "[attention][packing][documents]") {
  // Lengths straddle the 64-query and 128-key tiles; one zero-length sequence in the middle.
  check_packing<float>({5, 70, 1, 0, 130, 33}, 4, 2, 16, 8, 1e-5);
  check_packing<float>({64, 64, 129}, 2, 2, 65, 65, 1e-5);  // D > 64: 32-row query tiles
}

TEST_CASE("Sequences packed with documents & causal match each sequence run alone (double)",
          "[attention][packing][documents]") {
  check_packing<double>({5, 70, 1, 0, 130, 33}, 4, 1, 16, 8, 1e-12);
  check_packing<double>({17, 2, 200}, 2, 2, 3, 5, 1e-12);
}

TEST_CASE("Per-row packings in one batch match the sequences run alone", "[attention][packing][documents]") {
  veil::Generator gen(9);
  const Index L = 100, D = 8;
  auto q = veil::randn<double>({2, 2, L, D}, gen), k = veil::randn<double>({2, 2, L, D}, gen);
  auto v = veil::randn<double>({2, 2, L, D}, gen);
  const std::vector<std::vector<Index>> packings{{30, 70}, {64, 0, 36}};
  const auto out = veil::scaled_dot_product_attention(q, k, v, mask::documents(packings) & mask::causal()).to_vector();
  for (Index b = 0; b < 2; ++b) {
    Index begin = 0;
    for (Index n : packings[static_cast<std::size_t>(b)]) {
      if (n == 0) continue;
      auto pick = [&](const Tensor<double>& x) { return veil::slice(veil::slice(x, 0, b, b + 1), 2, begin, begin + n).contiguous(); };
      const auto alone = veil::scaled_dot_product_attention(pick(q), pick(k), pick(v), mask::causal());
      const auto packed_part = pick(veil::from_vector<double>(out, {2, 2, L, D}));
      CHECK(max_abs_diff(packed_part.to_vector(), alone.to_vector()) <= 1e-12);
      begin += n;
    }
  }
}

// One meaning per mask: causal() == allow(tril) == forbid(triu(1)) == additive(-inf above the
// diagonal), and the bottom-right / top-left alignments when Lq != Lk, pinned by hand-written
// pictures.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;

namespace {

/// [Lq, Lk] bool tensor with entry (i, j) = j <= i + offset.
Tensor<bool> tril(Index Lq, Index Lk, Index offset) {
  Tensor<bool> t = veil::zeros<bool>({Lq, Lk});
  for (Index i = 0; i < Lq; ++i)
    for (Index j = 0; j < Lk; ++j) t.data()[i * Lk + j] = j <= i + offset;
  return t;
}

Tensor<bool> negate(const Tensor<bool>& x) {
  Tensor<bool> t = veil::zeros<bool>(x.shape());
  for (Index e = 0; e < x.numel(); ++e) t.data()[e] = !x.data()[e];
  return t;
}

template <class T>
Tensor<T> minus_infinity_where_false(const Tensor<bool>& keep) {
  Tensor<T> t = veil::zeros<T>(keep.shape());
  for (Index e = 0; e < keep.numel(); ++e) t.data()[e] = keep.data()[e] ? T(0) : -std::numeric_limits<T>::infinity();
  return t;
}

template <class T>
struct Result {
  std::vector<T> out, dq, dk, dv;
};

template <class T>
Result<T> attend(const Tensor<T>& q0, const Tensor<T>& k0, const Tensor<T>& v0, const Tensor<T>& grad_out,
                 const mask::Mask& m) {
  auto q = q0.detach().contiguous().detach().set_requires_grad(true);
  auto k = k0.detach().contiguous().detach().set_requires_grad(true);
  auto v = v0.detach().contiguous().detach().set_requires_grad(true);
  auto out = veil::scaled_dot_product_attention(q, k, v, m);
  out.backward(grad_out);
  return {out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    REQUIRE(!std::isnan(a[e]));
    REQUIRE(!std::isnan(b[e]));
    worst = std::max(worst, std::abs(static_cast<double>(a[e]) - b[e]));
  }
  return worst;
}

template <class T>
void check_causal_spellings(Index Lq, Index Lk, Index D, double tolerance) {
  veil::Generator gen(static_cast<std::uint64_t>(Lq * 1000 + Lk));
  const Index B = 2, H = 4, Hkv = 2;
  const auto q = veil::randn<T>({B, H, Lq, D}, gen), k = veil::randn<T>({B, Hkv, Lk, D}, gen);
  const auto v = veil::randn<T>({B, Hkv, Lk, D}, gen), grad_out = veil::randn<T>({B, H, Lq, D}, gen);
  const Tensor<bool> lower = tril(Lq, Lk, Lk - Lq);  // bottom-right aligned
  const auto expected = attend(q, k, v, grad_out, mask::causal());
  const mask::Mask spellings[] = {mask::allow(lower), mask::forbid(negate(lower)),
                                  mask::additive(minus_infinity_where_false<T>(lower)),
                                  mask::sliding_window(mask::unbounded, 0)};
  const char* names[] = {"allow(tril)", "forbid(triu(1))", "additive(-inf above the diagonal)",
                         "sliding_window(unbounded, 0)"};
  for (int s = 0; s < 4; ++s) {
    const auto got = attend(q, k, v, grad_out, spellings[s]);
    INFO(names[s] << " vs causal(), Lq = " << Lq << ", Lk = " << Lk);
    CHECK(max_abs_diff(got.out, expected.out) <= tolerance);
    CHECK(max_abs_diff(got.dq, expected.dq) <= tolerance);
    CHECK(max_abs_diff(got.dk, expected.dk) <= tolerance);
    CHECK(max_abs_diff(got.dv, expected.dv) <= tolerance);
  }
}

/// Renders a [1, 1, Lq, Lk] keep pattern as rows of '1'/'0'.
std::vector<std::string> picture(const Tensor<bool>& keep) {
  const Index Lq = keep.size(2), Lk = keep.size(3);
  std::vector<std::string> rows;
  for (Index i = 0; i < Lq; ++i) {
    std::string row;
    for (Index j = 0; j < Lk; ++j) row += keep.data()[i * Lk + j] ? '1' : '0';
    rows.push_back(row);
  }
  return rows;
}

Tensor<bool> from_picture(const std::vector<std::string>& rows) {
  const Index Lq = static_cast<Index>(rows.size()), Lk = static_cast<Index>(rows[0].size());
  Tensor<bool> t = veil::zeros<bool>({Lq, Lk});
  for (Index i = 0; i < Lq; ++i)
    for (Index j = 0; j < Lk; ++j) t.data()[i * Lk + j] = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] == '1';
  return t;
}

}  // namespace

TEST_CASE("causal equals allow(tril), forbid(triu(1)) and additive(-inf above the diagonal)",
          "[attention][equivalence][causal]") {
  for (auto [Lq, Lk] : std::vector<std::pair<Index, Index>>{{70, 70}, {3, 5}, {5, 3}, {40, 150}, {150, 40}}) {
    check_causal_spellings<double>(Lq, Lk, 8, 1e-12);
    check_causal_spellings<float>(Lq, Lk, 8, 1e-5);
  }
}

TEST_CASE("Causal alignments pictured for 3x5 and 5x3", "[attention][equivalence][causal][materialize]") {
  using Picture = std::vector<std::string>;
  // Bottom-right (flash-attention >= 2.1): keep j <= i + (Lk - Lq).
  CHECK(picture(mask::materialize(mask::causal(), 1, 1, 3, 5)) == Picture{"11100", "11110", "11111"});
  CHECK(picture(mask::materialize(mask::causal(), 1, 1, 5, 3)) == Picture{"000", "000", "100", "110", "111"});
  // Top-left (PyTorch is_causal): keep j <= i.
  CHECK(picture(mask::materialize(mask::causal_top_left(), 1, 1, 3, 5)) == Picture{"10000", "11000", "11100"});
  CHECK(picture(mask::materialize(mask::causal_top_left(), 1, 1, 5, 3)) == Picture{"100", "110", "111", "111", "111"});
  // Equal lengths: both alignments agree.
  CHECK(picture(mask::materialize(mask::causal(), 1, 1, 3, 3)) == Picture{"100", "110", "111"});
  CHECK(picture(mask::materialize(mask::causal_top_left(), 1, 1, 3, 3)) == Picture{"100", "110", "111"});
  // sliding_window(1, 1) is bottom-right aligned too; & causal() keeps the last two keys.
  CHECK(picture(mask::materialize(mask::sliding_window(1, 1), 1, 1, 3, 5)) == Picture{"01110", "00111", "00011"});
  CHECK(picture(mask::materialize(mask::causal() & mask::sliding_window(1, 0), 1, 1, 5, 3)) ==
        Picture{"000", "000", "100", "110", "011"});
}

TEST_CASE("Causal alignments attend like hand-built allow masks when Lq != Lk", "[attention][equivalence][causal]") {
  veil::Generator gen(77);
  const struct {
    mask::Mask mask;
    std::vector<std::string> rows;
  } cases[] = {{mask::causal(), {"11100", "11110", "11111"}},
               {mask::causal_top_left(), {"10000", "11000", "11100"}},
               {mask::causal(), {"000", "000", "100", "110", "111"}},
               {mask::causal_top_left(), {"100", "110", "111", "111", "111"}}};
  for (const auto& c : cases) {
    const Index Lq = static_cast<Index>(c.rows.size()), Lk = static_cast<Index>(c.rows[0].size());
    const auto q = veil::randn<double>({1, 2, Lq, 4}, gen), k = veil::randn<double>({1, 2, Lk, 4}, gen);
    const auto v = veil::randn<double>({1, 2, Lk, 3}, gen), grad_out = veil::randn<double>({1, 2, Lq, 3}, gen);
    const auto typed = attend(q, k, v, grad_out, c.mask);
    const auto hand = attend(q, k, v, grad_out, mask::allow(from_picture(c.rows)));
    INFO("Lq = " << Lq << ", Lk = " << Lk);
    CHECK(max_abs_diff(typed.out, hand.out) <= 1e-12);
    CHECK(max_abs_diff(typed.dq, hand.dq) <= 1e-12);
    CHECK(max_abs_diff(typed.dk, hand.dk) <= 1e-12);
    CHECK(max_abs_diff(typed.dv, hand.dv) <= 1e-12);
    // Rows the picture leaves empty are exactly 0.
    for (Index i = 0; i < Lq; ++i)
      if (c.rows[static_cast<std::size_t>(i)].find('1') == std::string::npos)
        for (Index h = 0; h < 2; ++h)
          for (Index d = 0; d < 3; ++d) CHECK(typed.out[static_cast<std::size_t>((h * Lq + i) * 3 + d)] == 0.0);
  }
}

TEST_CASE("an or with none keeps every edge but still adds the other side's bias", "[attention][equivalence]") {
  veil::Generator generator(11);
  const auto q = veil::randn<double>({1, 2, 5, 4}, generator), k = veil::randn<double>({1, 2, 6, 4}, generator),
             v = veil::randn<double>({1, 2, 6, 3}, generator);
  const auto bias = veil::randn<double>({5, 6}, generator);
  const auto with_bias = veil::mask::additive(bias) | veil::mask::none();
  const auto expected = veil::scaled_dot_product_attention(q, k, v, veil::mask::additive(bias)).to_vector();
  const auto got = veil::scaled_dot_product_attention(q, k, v, with_bias).to_vector();
  REQUIRE(got.size() == expected.size());
  for (std::size_t e = 0; e < got.size(); ++e) CHECK(got[e] == Approx(expected[e]).margin(1e-12));
  CHECK((veil::mask::causal() | veil::mask::none()).is_none());
}

TEST_CASE("Transposed, strided and expanded masks and biases give the bits of their contiguous copies",
          "[attention][equivalence][strides]") {
  // Dense masks are read through their strides (never assumed row-major), so a view needs no
  // copy and a layout cannot change the result. Lq and Lk straddle the tile sizes.
  veil::Generator gen(31);
  const Index B = 2, H = 2, Lq = 70, Lk = 150, D = 8;
  const auto q = veil::randn<float>({B, H, Lq, D}, gen), k = veil::randn<float>({B, H, Lk, D}, gen);
  const auto v = veil::randn<float>({B, H, Lk, D}, gen), grad_out = veil::randn<float>({B, H, Lq, D}, gen);
  const auto same = [&](const mask::Mask& view, const mask::Mask& copy) {
    const auto a = attend(q, k, v, grad_out, view), b = attend(q, k, v, grad_out, copy);
    CHECK(a.out == b.out);
    CHECK(a.dq == b.dq);
    CHECK(a.dk == b.dk);
    CHECK(a.dv == b.dv);
  };
  Tensor<bool> keys_by_queries = veil::zeros<bool>({Lk, Lq});  // stored transposed
  for (Index e = 0; e < keys_by_queries.numel(); ++e) keys_by_queries.data()[e] = (e * 7 + e / 13) % 5 != 0;
  const Tensor<bool> transposed = keys_by_queries.transpose(0, 1);  // [Lq, Lk], strides [1, Lq]
  REQUIRE_FALSE(transposed.is_contiguous());
  {
    INFO("allow of a transposed bool tensor");
    same(mask::allow(transposed), mask::allow(transposed.contiguous()));
  }
  {
    INFO("forbid of every other column of a wider tensor");
    Tensor<bool> wide = veil::zeros<bool>({Lq, 2 * Lk});
    for (Index e = 0; e < wide.numel(); ++e) wide.data()[e] = e % 3 == 0;
    const Tensor<bool> strided = veil::slice(wide, 1, 0, 2 * Lk, 2);
    REQUIRE_FALSE(strided.is_contiguous());
    same(mask::forbid(strided), mask::forbid(strided.contiguous()));
  }
  {
    INFO("additive bias: a transposed view and a [1, Lk] row expanded to [B, H, Lq, Lk] (stride 0)");
    const Tensor<float> bias_t = veil::randn<float>({Lk, Lq}, gen).transpose(0, 1);
    REQUIRE_FALSE(bias_t.is_contiguous());
    same(mask::additive(bias_t), mask::additive(bias_t.contiguous()));
    const Tensor<float> row = veil::randn<float>({1, Lk}, gen);
    same(mask::additive(veil::expand(row, {B, H, Lq, Lk})), mask::additive(veil::expand(row, {B, H, Lq, Lk}).contiguous()));
  }
  {
    INFO("the gradient of a transposed bias reaches its leaf transposed back");
    auto leaf_t = veil::randn<float>({Lk, Lq}, gen).set_requires_grad(true);
    auto leaf = leaf_t.detach().transpose(0, 1).contiguous().detach().set_requires_grad(true);
    attend(q, k, v, grad_out, mask::additive(veil::transpose(leaf_t, 0, 1)) & mask::allow(transposed));
    attend(q, k, v, grad_out, mask::additive(leaf) & mask::allow(transposed));
    CHECK(leaf_t.grad().transpose(0, 1).contiguous().to_vector() == leaf.grad().to_vector());
  }
}

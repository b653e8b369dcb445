#include <veil/autograd.hpp>
#include <veil/ops/matmul.hpp>

#include <catch2/catch.hpp>

#include <cstring>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil_test::MessageContains;

namespace {

/// Triple loop in double: a [M, K] x b [K, N], element access through at() (any strides).
template <class T>
std::vector<double> naive_product(const Tensor<T>& a, const Tensor<T>& b) {
  const Index m = a.size(0), k = a.size(1), n = b.size(1);
  std::vector<double> out(static_cast<std::size_t>(m * n), 0.0);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j)
      for (Index p = 0; p < k; ++p) out[i * n + j] += double(a.at({i, p})) * double(b.at({p, j}));
  return out;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tolerance = 1e-12) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    CHECK(got[i] == Approx(want[i]).epsilon(tolerance).margin(tolerance));
  }
}

void check_gradcheck(const Tensor<double>& a, const Tensor<double>& b) {
  INFO("a " << veil::to_string(a.shape()) << " b " << veil::to_string(b.shape()));
  auto ga = veil::detail::copy_contiguous(a).set_requires_grad(true);
  auto gb = veil::detail::copy_contiguous(b).set_requires_grad(true);
  const auto result = veil::gradcheck([](const auto& in) { return veil::matmul(in[0], in[1]); }, {ga, gb});
  INFO(result.message);
  CHECK(result.passed);
}

/// The matrix at leading indices `index` of t: [..., R, C] -> [R, C] (a view).
template <class T>
Tensor<T> matrix_at(Tensor<T> t, const Shape& index) {
  for (Index i : index) t = veil::squeeze(veil::narrow(t, 0, i, 1), 0);
  return t;
}

struct Outcome {
  std::vector<double> out, grad_a, grad_b;
};

/// matmul(a, b) with a fixed upstream gradient; a and b are used as given (views stay views).
Outcome run(const Tensor<double>& a_in, const Tensor<double>& b_in) {
  auto a = a_in.detach().set_requires_grad(true);  // fresh leaves sharing the views' geometry
  auto b = b_in.detach().set_requires_grad(true);
  auto y = veil::matmul(a, b);
  veil::Generator gen(17);
  y.backward(veil::randn<double>(y.shape(), gen));
  return {y.to_vector(), a.grad().to_vector(), b.grad().to_vector()};
}

}  // namespace

TEST_CASE("matmul of two matrices matches the hand-computed product", "[ops][matmul]") {
  auto a = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  auto b = veil::from_vector<double>({7, 8, 9, 10, 11, 12}, {3, 2});
  auto y = veil::matmul(a, b);
  CHECK(y.shape() == Shape{2, 2});
  CHECK(y.to_vector() == std::vector<double>{58, 64, 139, 154});
}

TEST_CASE("matmul treats 1-d operands as a row or a column and drops that dimension", "[ops][matmul]") {
  auto a = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  auto b = veil::from_vector<double>({7, 8, 9, 10, 11, 12}, {3, 2});
  auto v = veil::from_vector<double>({1, 2, 3}, {3});
  auto w = veil::from_vector<double>({4, 5, 6}, {3});
  CHECK(veil::matmul(v, b).shape() == Shape{2});
  CHECK(veil::matmul(v, b).to_vector() == std::vector<double>{58, 64});
  CHECK(veil::matmul(a, w).shape() == Shape{2});
  CHECK(veil::matmul(a, w).to_vector() == std::vector<double>{32, 77});
  CHECK(veil::matmul(v, w).shape() == Shape{});
  CHECK(veil::matmul(v, w).item() == 32);
  // A batched matrix times a vector: [2, 2, 3] x [3] -> [2, 2].
  auto batch = veil::from_vector<double>({1, 2, 3, 4, 5, 6, 0, 0, 1, 1, 0, 0}, {2, 2, 3});
  CHECK(veil::matmul(batch, w).to_vector() == std::vector<double>{32, 77, 6, 4});
}

TEST_CASE("matmul broadcasts batch dimensions", "[ops][matmul]") {
  veil::Generator gen(2);
  auto a = veil::randn<double>({2, 1, 4, 3}, gen);
  auto b = veil::randn<double>({3, 3, 5}, gen);
  auto y = veil::matmul(a, b);
  REQUIRE(y.shape() == Shape{2, 3, 4, 5});
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      check_close(matrix_at(y, {i, j}).to_vector(), naive_product(matrix_at(a, {i, 0}), matrix_at(b, {j})));
  // A batch against one matrix (folded into one tall product) and one matrix against a batch.
  auto m = veil::randn<double>({3, 5}, gen);
  auto batch = veil::randn<double>({2, 3, 4, 3}, gen);
  auto folded = veil::matmul(batch, m);
  REQUIRE(folded.shape() == Shape{2, 3, 4, 5});
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j) check_close(matrix_at(folded, {i, j}).to_vector(), naive_product(matrix_at(batch, {i, j}), m));
  auto left = veil::randn<double>({4, 3}, gen);
  auto spread = veil::matmul(left, b);
  REQUIRE(spread.shape() == Shape{3, 4, 5});
  for (Index j = 0; j < 3; ++j) check_close(matrix_at(spread, {j}).to_vector(), naive_product(left, matrix_at(b, {j})));
}

TEST_CASE("float matmul large enough for Eigen's blocked GEMM matches a double reference", "[ops][matmul]") {
  veil::Generator gen(4);
  auto a = veil::randn<float>({97, 70}, gen);
  auto b = veil::randn<float>({70, 83}, gen);
  const auto want = naive_product(a, b);
  const auto got = veil::matmul(a, b).to_vector();
  REQUIRE(got.size() == want.size());
  // 70 products of unit normals: float rounding is about sqrt(70) · 6e-8 · |terms| ≈ 1e-5 absolute.
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(double(got[i]) == Approx(want[i]).margin(1e-4));
}

TEST_CASE("matmul with a zero-size dimension gives zeros or an empty result", "[ops][matmul]") {
  auto y = veil::matmul(veil::ones<double>({2, 0}), veil::ones<double>({0, 3}));
  CHECK(y.shape() == Shape{2, 3});
  CHECK(y.to_vector() == std::vector<double>(6, 0.0));
  CHECK(veil::matmul(veil::ones<double>({0, 4}), veil::ones<double>({4, 3})).shape() == Shape{0, 3});
  CHECK(veil::matmul(veil::ones<double>({0, 2, 4}), veil::ones<double>({4, 3})).shape() == Shape{0, 2, 3});
  CHECK(veil::matmul(veil::ones<double>({2, 1, 2, 4}), veil::ones<double>({0, 4, 3})).shape() == Shape{2, 0, 2, 3});

  auto a = veil::ones<double>({2, 0}).set_requires_grad(true);
  auto b = veil::ones<double>({0, 3}).set_requires_grad(true);
  veil::matmul(a, b).backward(veil::ones<double>({2, 3}));
  CHECK(a.grad().shape() == Shape{2, 0});
  CHECK(b.grad().shape() == Shape{0, 3});
}

TEST_CASE("matmul gradients pass gradcheck for every operand form", "[ops][matmul]") {
  veil::Generator gen(5);
  const auto r = [&](Shape shape) { return veil::randn<double>(shape, gen); };
  check_gradcheck(r({2, 3}), r({3, 4}));
  check_gradcheck(r({3}), r({3, 4}));
  check_gradcheck(r({2, 3}), r({3}));
  check_gradcheck(r({3}), r({3}));
  check_gradcheck(r({2, 1, 2, 3}), r({3, 3, 2}));  // both broadcast along a batch dimension
  check_gradcheck(r({2, 2, 3}), r({3, 2}));        // batch x matrix: the folded path
  check_gradcheck(r({2, 3}), r({2, 3, 2}));        // matrix x batch: grad_a summed over the batch
  check_gradcheck(r({2, 2, 3}), r({3}));
  check_gradcheck(r({3}), r({2, 3, 2}));
  check_gradcheck(r({1, 2, 3}), r({1, 3, 1}));  // size-1 batch, M and N
}

TEST_CASE("matmul computes a gradient only for operands that need one", "[ops][matmul]") {
  veil::Generator gen(6);
  auto a = veil::randn<double>({2, 3}, gen).set_requires_grad(true);
  auto b = veil::randn<double>({3, 4}, gen);
  veil::matmul(a, b).backward(veil::ones<double>({2, 4}));
  CHECK(a.grad().defined());
  CHECK_FALSE(b.grad().defined());
  // d/da Σ (a b) = 1 bᵀ: every row of grad_a holds the row sums of b.
  const auto g = a.grad().to_vector();
  for (Index i = 0; i < 2; ++i)
    for (Index k = 0; k < 3; ++k) {
      double row_sum = 0;
      for (Index j = 0; j < 4; ++j) row_sum += b.at({k, j});
      CHECK(g[i * 3 + k] == Approx(row_sum).epsilon(1e-14));
    }
}

TEST_CASE("matmul of transposed, sliced and expanded views matches contiguous copies", "[ops][matmul]") {
  veil::Generator gen(8);
  const auto copy = [](const Tensor<double>& t) { return veil::detail::copy_contiguous(t); };
  const auto same = [&](const Tensor<double>& a, const Tensor<double>& b) {
    INFO("a strides " << veil::to_string(a.strides()) << " b strides " << veil::to_string(b.strides()));
    const Outcome view = run(a, b), contiguous = run(copy(a), copy(b));
    check_close(view.out, contiguous.out);
    check_close(view.grad_a, contiguous.grad_a);
    check_close(view.grad_b, contiguous.grad_b);
  };
  auto a_t = veil::transpose(veil::randn<double>({3, 2}, gen), 0, 1);  // [2, 3] column-major
  auto b_t = veil::transpose(veil::randn<double>({4, 3}, gen), 0, 1);  // [3, 4] column-major
  same(a_t, b_t);
  auto a_sliced = veil::slice(veil::randn<double>({2, 6}, gen), 1, 0, 6, 2);  // column stride 2: copied
  same(a_sliced, b_t);
  auto b_expanded = veil::expand(veil::randn<double>({1, 4}, gen), {3, 4});  // row stride 0: copied
  same(a_t, b_expanded);
  auto batch_t = veil::transpose(veil::randn<double>({2, 3, 2}, gen), 1, 2);  // [2, 2, 3], not foldable
  same(batch_t, b_t);
  auto batch_permuted = veil::permute(veil::randn<double>({3, 2, 4}, gen), {1, 0, 2});  // [2, 3, 4]
  same(batch_permuted, veil::randn<double>({2, 4, 5}, gen));
  auto vector_strided = veil::slice(veil::randn<double>({6}, gen), 0, 0, 6, 2);  // [3], stride 2
  same(vector_strided, b_t);
}

TEST_CASE("matmul backward on a retained graph gives identical gradients twice", "[ops][matmul]") {
  veil::Generator gen(10);
  for (const auto& [sa, sb] : {std::pair<Shape, Shape>{{5, 6}, {6, 7}}, {{2, 1, 5, 6}, {3, 6, 7}}, {{4, 5, 6}, {6, 7}}}) {
    auto a = veil::randn<double>(sa, gen).set_requires_grad(true);
    auto b = veil::randn<double>(sb, gen).set_requires_grad(true);
    auto y = veil::matmul(a, b);
    auto g = veil::randn<double>(y.shape(), gen);
    y.backward(g, /*retain_graph=*/true);
    const auto a_first = a.grad().to_vector(), b_first = b.grad().to_vector();
    a.zero_grad();
    b.zero_grad();
    y.backward(g, /*retain_graph=*/true);
    const auto a_second = a.grad().to_vector(), b_second = b.grad().to_vector();
    CHECK(std::memcmp(a_first.data(), a_second.data(), a_first.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(b_first.data(), b_second.data(), b_first.size() * sizeof(double)) == 0);
  }
}

TEST_CASE("matmul rejects operands whose shapes do not fit, naming both shapes", "[ops][matmul]") {
  const auto z = [](Shape shape) { return veil::zeros<double>(shape); };
  REQUIRE_THROWS_MATCHES(veil::matmul(z({2, 3}), z({4, 5})), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("[4, 5]") && MessageContains("got 4"));
  REQUIRE_THROWS_MATCHES(veil::matmul(z({3}), z({4})), veil::ShapeError, MessageContains("[3]") && MessageContains("[4]"));
  REQUIRE_THROWS_MATCHES(veil::matmul(z({2, 2, 3}), z({3, 3, 2})), veil::ShapeError,
                         MessageContains("[2, 2, 3]") && MessageContains("[3, 3, 2]") && MessageContains("broadcast"));
  REQUIRE_THROWS_MATCHES(veil::matmul(z({}), z({3, 2})), veil::ShapeError,
                         MessageContains("at least 1 dimension") && MessageContains("[]") && MessageContains("[3, 2]"));
}

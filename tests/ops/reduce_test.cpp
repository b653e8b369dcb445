#include <veil/autograd.hpp>
#include <veil/ops/reduce.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cmath>
#include <cstring>
#include <limits>

using veil::Shape;
using veil::Tensor;
using veil_test::MessageContains;

namespace {

std::vector<double> grad_of(const Tensor<double>& t) { return t.grad().to_vector(); }

/// The forward values and input gradient of f at x, for a fixed upstream gradient g.
template <class F>
std::pair<std::vector<double>, std::vector<double>> forward_and_grad(F f, Tensor<double> x, std::uint64_t seed) {
  x.set_requires_grad(true);
  auto y = f(x);
  veil::Generator gen(seed);
  y.backward(veil::randn<double>(y.shape(), gen));
  return {y.to_vector(), x.grad().to_vector()};
}

/// f on a transposed view of a [4, 3] base must match f on a contiguous copy of that view.
template <class F>
void check_transposed_input_matches_copy(F f) {
  veil::Generator gen(7);
  auto base = veil::randn<double>({4, 3}, gen);
  auto view = veil::transpose(base, 0, 1);  // [3, 4], strides [1, 3]
  REQUIRE_FALSE(view.is_contiguous());
  auto copy = veil::detail::copy_contiguous(view);
  const auto [y_view, g_view] = forward_and_grad(f, view, 11);
  const auto [y_copy, g_copy] = forward_and_grad(f, copy, 11);
  CHECK(y_view == y_copy);
  CHECK(g_view == g_copy);
}

/// Two backward passes over one retained graph, grads zeroed in between, give identical bits.
template <class F>
void check_backward_twice_identical(F f) {
  veil::Generator gen(3);
  auto x = veil::randn<double>({3, 5, 4}, gen).set_requires_grad(true);
  auto y = f(x);
  auto g = veil::randn<double>(y.shape(), gen);
  y.backward(g, /*retain_graph=*/true);
  const auto first = grad_of(x);
  x.zero_grad();
  y.backward(g, /*retain_graph=*/true);
  const auto second = grad_of(x);
  REQUIRE(first.size() == second.size());
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)) == 0);
}

void check_gradcheck(const std::function<Tensor<double>(const std::vector<Tensor<double>>&)>& f, Tensor<double> x) {
  x.set_requires_grad(true);
  const auto result = veil::gradcheck(f, {x});
  INFO(result.message);
  CHECK(result.passed);
}

// x[i, j, k] = 12 i + 4 j + k, shape [2, 3, 4].
Tensor<double> counting_cube() { return veil::arange<double>(24).reshape({2, 3, 4}); }

}  // namespace

TEST_CASE("sum over chosen dimensions matches hand-computed totals", "[ops][reduce]") {
  auto x = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(veil::sum(x, {0}).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(veil::sum(x, {1}).to_vector() == std::vector<double>{6, 15});
  CHECK(veil::sum(x, {-1}, true).shape() == Shape{2, 1});
  CHECK(veil::sum(x, {-1}, true).to_vector() == std::vector<double>{6, 15});
  CHECK(veil::sum(x, {0, 1}).shape() == Shape{});
  CHECK(veil::sum(x).shape() == Shape{});
  CHECK(veil::sum(x).item() == 21);
  CHECK(veil::sum(x, {}, true).shape() == Shape{1, 1});
  // Σ_i Σ_k (12 i + 4 j + k) = 60 + 32 j over the outer and inner dimensions of the cube.
  auto cube = counting_cube();
  CHECK(veil::sum(cube, {0, 2}).to_vector() == std::vector<double>{60, 92, 124});
  CHECK(veil::sum(cube, {2, 0}, true).shape() == Shape{1, 3, 1});
}

TEST_CASE("mean divides the sum by the number of reduced elements", "[ops][reduce]") {
  auto cube = counting_cube();
  CHECK(veil::mean(cube, {0, 2}).to_vector() == std::vector<double>{7.5, 11.5, 15.5});
  CHECK(veil::mean(cube).item() == 11.5);
  CHECK(veil::mean(cube, {1}).to_vector() ==
        std::vector<double>{4, 5, 6, 7, 16, 17, 18, 19});  // (12 i + k) + 4 · (0 + 1 + 2) / 3
}

TEST_CASE("max takes the largest element and NaN wins like in PyTorch", "[ops][reduce]") {
  auto x = veil::from_vector<double>({1, 5, 3, 4, 2, 6}, {2, 3});
  CHECK(veil::max(x, {1}).to_vector() == std::vector<double>{5, 6});
  CHECK(veil::max(x, {0}).to_vector() == std::vector<double>{4, 5, 6});
  CHECK(veil::max(x, {0}, true).shape() == Shape{1, 3});
  CHECK(veil::max(x).item() == 6);
  CHECK(veil::max(counting_cube(), {0, 2}).to_vector() == std::vector<double>{15, 19, 23});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto with_nan = veil::from_vector<double>({1, nan, 3, -1, -2, -3}, {2, 3});
  auto maxima = veil::max(with_nan, {1}).to_vector();
  CHECK(std::isnan(maxima[0]));
  CHECK(maxima[1] == -1);
}

TEST_CASE("max sends the gradient to the first maximum of each group only", "[ops][reduce]") {
  auto x = veil::from_vector<double>({3, 1, 3}, {3}).set_requires_grad(true);
  veil::max(x).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1, 0, 0});

  auto m = veil::from_vector<double>({2, 5, 2, 1, 0, 5}, {3, 2}).set_requires_grad(true);
  veil::max(m, {0}).backward(veil::from_vector<double>({10, 20}, {2}));
  CHECK(m.grad().to_vector() == std::vector<double>{10, 20, 0, 0, 0, 0});
}

TEST_CASE("logsumexp is computed max-shifted and handles infinities like PyTorch", "[ops][reduce]") {
  auto x = veil::from_vector<double>({1, 2, 3, 1000, 1000, 1000}, {2, 3});
  auto lse = veil::logsumexp(x, 1).to_vector();
  CHECK(lse[0] == Approx(std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0))).epsilon(1e-14));
  CHECK(lse[1] == Approx(1000 + std::log(3.0)).epsilon(1e-14));
  CHECK(veil::logsumexp(x, 0, true).shape() == Shape{1, 3});
  CHECK(veil::logsumexp(x, -2).to_vector()[0] == Approx(1000.0).epsilon(1e-14));  // log(e^1 + e^1000) = 1000 + tiny

  const double inf = std::numeric_limits<double>::infinity();
  auto special = veil::from_vector<double>({-inf, -inf, 1, inf}, {2, 2});
  auto out = veil::logsumexp(special, 1).to_vector();
  CHECK(out[0] == -inf);
  CHECK(out[1] == inf);
  // Over an empty dimension the sum of exponentials is 0: log 0 = -inf.
  CHECK(veil::logsumexp(veil::zeros<double>({2, 0}), 1).to_vector() == std::vector<double>{-inf, -inf});
}

TEST_CASE("reductions over a zero-size dimension give 0, NaN, or a ValueError for max", "[ops][reduce]") {
  auto empty = veil::zeros<double>({0, 3});
  CHECK(veil::sum(empty, {0}).to_vector() == std::vector<double>{0, 0, 0});
  CHECK(veil::sum(empty).item() == 0);
  for (double v : veil::mean(empty, {0}).to_vector()) CHECK(std::isnan(v));
  CHECK(veil::sum(empty, {1}).shape() == Shape{0});
  CHECK(veil::max(empty, {1}).shape() == Shape{0});
  REQUIRE_THROWS_MATCHES(veil::max(empty, {0}), veil::ValueError,
                         MessageContains("dimension 0") && MessageContains("[0, 3]") && MessageContains("got 0"));
  REQUIRE_THROWS_MATCHES(veil::max(empty), veil::ValueError, MessageContains("dimension 0"));

  // The gradient of a sum over nothing is an empty tensor of the input's shape.
  auto leaf = veil::zeros<double>({0, 3}).set_requires_grad(true);
  veil::sum(leaf, {0}).backward(veil::ones<double>({3}));
  CHECK(leaf.grad().shape() == Shape{0, 3});
}

TEST_CASE("reductions of a 0-d tensor return the value itself", "[ops][reduce]") {
  auto s = veil::scalar<double>(5);
  CHECK(veil::sum(s).item() == 5);
  CHECK(veil::sum(s, {0}).shape() == Shape{});
  CHECK(veil::mean(s, {-1}).item() == 5);
  CHECK(veil::max(s).item() == 5);
  CHECK(veil::logsumexp(s, 0).item() == 5);
}

TEST_CASE("reduction gradients pass gradcheck", "[ops][reduce]") {
  veil::Generator gen(1);
  auto x = veil::randn<double>({3, 4, 2}, gen);
  for (bool keepdim : {false, true}) {
    for (const Shape& dims : {Shape{}, Shape{0}, Shape{1}, Shape{-1}, Shape{0, 2}}) {
      INFO("dims " << veil::to_string(dims) << " keepdim " << keepdim);
      check_gradcheck([=](const auto& in) { return veil::sum(in[0], dims, keepdim); }, x);
      check_gradcheck([=](const auto& in) { return veil::mean(in[0], dims, keepdim); }, x);
      // randn values are distinct, so the maximum is unique and the function is smooth nearby.
      check_gradcheck([=](const auto& in) { return veil::max(in[0], dims, keepdim); }, x);
    }
    for (veil::Index dim : {0, 1, 2, -1}) {
      INFO("logsumexp dim " << dim << " keepdim " << keepdim);
      check_gradcheck([=](const auto& in) { return veil::logsumexp(in[0], dim, keepdim); }, x);
    }
  }
}

TEST_CASE("reductions of a transposed view match reductions of its contiguous copy", "[ops][reduce]") {
  check_transposed_input_matches_copy([](const auto& t) { return veil::sum(t, {0}); });
  check_transposed_input_matches_copy([](const auto& t) { return veil::sum(t, {1}, true); });
  check_transposed_input_matches_copy([](const auto& t) { return veil::mean(t, {0}); });
  check_transposed_input_matches_copy([](const auto& t) { return veil::max(t, {1}); });
  check_transposed_input_matches_copy([](const auto& t) { return veil::logsumexp(t, 0); });
  // A strided slice (every other column) as well.
  veil::Generator gen(5);
  auto base = veil::randn<double>({3, 8}, gen);
  auto sliced = veil::slice(base, 1, 0, 8, 2);
  CHECK(veil::sum(sliced, {1}).to_vector() == veil::sum(veil::detail::copy_contiguous(sliced), {1}).to_vector());
}

TEST_CASE("reduction backward on a retained graph gives identical gradients twice", "[ops][reduce]") {
  check_backward_twice_identical([](const auto& t) { return veil::sum(t, {0, 2}); });
  check_backward_twice_identical([](const auto& t) { return veil::mean(t, {1}, true); });
  check_backward_twice_identical([](const auto& t) { return veil::max(t, {2}); });
  check_backward_twice_identical([](const auto& t) { return veil::logsumexp(t, 1); });
}

TEST_CASE("sum gives the same bits for any thread count", "[ops][reduce]") {
  const int saved = veil::num_threads();
  veil::Generator gen(9);
  // More than one chunk per group, and a group count that does not divide evenly across threads.
  auto x = veil::randn<float>({3, 50001}, gen);
  auto tall = veil::randn<float>({20001, 7}, gen);
  veil::set_num_threads(1);
  const auto rows_one = veil::sum(x, {1}).to_vector();
  const auto all_one = veil::sum(x).item();
  const auto cols_one = veil::sum(tall, {0}).to_vector();
  const auto max_one = veil::max(x, {1}).to_vector();
  veil::set_num_threads(2);
  CHECK(veil::sum(x, {1}).to_vector() == rows_one);
  CHECK(veil::sum(x).item() == all_one);
  CHECK(veil::sum(tall, {0}).to_vector() == cols_one);
  CHECK(veil::max(x, {1}).to_vector() == max_one);
  veil::set_num_threads(saved);
  // Every partial sum of ones is an integer below 2^24, so the float result is exact.
  CHECK(veil::sum(veil::ones<float>({(1 << 20) + 3})).item() == float((1 << 20) + 3));
}

TEST_CASE("reductions reject out-of-range and repeated dimensions", "[ops][reduce]") {
  auto x = veil::zeros<double>({2, 3});
  REQUIRE_THROWS_MATCHES(veil::sum(x, {2}), veil::ValueError, MessageContains("[-2, 1]") && MessageContains("got 2"));
  REQUIRE_THROWS_MATCHES(veil::mean(x, {-3}), veil::ValueError, MessageContains("[-2, 1]") && MessageContains("got -3"));
  REQUIRE_THROWS_MATCHES(veil::max(x, {0, -2}), veil::ValueError, MessageContains("[0, -2]") && MessageContains("twice"));
  REQUIRE_THROWS_MATCHES(veil::logsumexp(x, 5), veil::ValueError, MessageContains("got 5"));
}

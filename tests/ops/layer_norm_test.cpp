#include <veil/ops.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cmath>
#include <vector>

using veil::Tensor;
using veil_test::MessageContains;

TEST_CASE("layer_norm matches hand-computed rows with weight and bias", "[ops][layer_norm]") {
  // Row 0: mean 2.5, biased variance 1.25.  Row 1: mean 3, variance 3.  eps = 0 keeps the numbers exact.
  auto x = veil::from_vector<double>({1, 2, 3, 4, 2, 2, 2, 6}, {2, 4});
  auto weight = veil::from_vector<double>({1, 2, 1, -1}, {4});
  auto bias = veil::from_vector<double>({0, 0, 1, 0.5}, {4});
  auto y = veil::layer_norm(x, {4}, weight, bias, 0.0).to_vector();
  const double r0 = 1 / std::sqrt(1.25);
  const double r1 = 1 / std::sqrt(3.0);
  const std::vector<double> expected{-1.5 * r0, 2 * -0.5 * r0, 0.5 * r0 + 1, -1.5 * r0 + 0.5,
                                     -r1,       2 * -r1,       -r1 + 1,      -3 * r1 + 0.5};
  REQUIRE(y.size() == expected.size());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == Approx(expected[i]).epsilon(1e-14));
}

TEST_CASE("layer_norm without weight and bias has zero mean and unit variance per row", "[ops][layer_norm]") {
  veil::Generator gen(3);
  auto x = veil::randn<double>({5, 7}, gen, 4.0, 3.0);
  auto y = veil::layer_norm(x, {7}).to_vector();
  for (int r = 0; r < 5; ++r) {
    double sum = 0, squares = 0;
    for (int j = 0; j < 7; ++j) sum += y[r * 7 + j];
    for (int j = 0; j < 7; ++j) squares += (y[r * 7 + j] - sum / 7) * (y[r * 7 + j] - sum / 7);
    CHECK(sum / 7 == Approx(0.0).margin(1e-12));
    // Variance of the output is var / (var + eps), just under 1.
    CHECK(squares / 7 == Approx(1.0).epsilon(1e-5));
  }
}

TEST_CASE("layer_norm of a constant row returns the bias and finite gradients", "[ops][layer_norm]") {
  auto x = veil::full<double>({2, 3}, 5.0).set_requires_grad(true);
  auto weight = veil::from_vector<double>({2, 3, 4}, {3}).set_requires_grad(true);
  auto bias = veil::from_vector<double>({0.1, 0.2, 0.3}, {3}).set_requires_grad(true);
  auto y = veil::layer_norm(x, {3}, weight, bias);
  CHECK(y.to_vector() == std::vector<double>{0.1, 0.2, 0.3, 0.1, 0.2, 0.3});
  y.backward(veil::from_vector<double>({1, -2, 3, 0.5, 0.5, 0.5}, {2, 3}));
  for (double g : x.grad().to_vector()) CHECK(std::isfinite(g));
  CHECK(weight.grad().to_vector() == std::vector<double>{0, 0, 0});
  CHECK(bias.grad().to_vector() == std::vector<double>{1.5, -1.5, 3.5});
}

TEST_CASE("layer_norm passes gradcheck for x together with weight and bias", "[ops][layer_norm][gradcheck]") {
  veil::Generator gen(11);
  SECTION("one normalized dimension") {
    auto x = veil::randn<double>({3, 5}, gen).set_requires_grad(true);
    auto weight = veil::randn<double>({5}, gen).set_requires_grad(true);
    auto bias = veil::randn<double>({5}, gen).set_requires_grad(true);
    auto result = veil::gradcheck([](const auto& in) { return veil::layer_norm(in[0], {5}, in[1], in[2]); },
                                  {x, weight, bias});
    INFO(result.message);
    CHECK(result.passed);
  }
  SECTION("two normalized dimensions") {
    auto x = veil::randn<double>({2, 3, 4}, gen).set_requires_grad(true);
    auto weight = veil::randn<double>({3, 4}, gen).set_requires_grad(true);
    auto bias = veil::randn<double>({3, 4}, gen).set_requires_grad(true);
    auto result = veil::gradcheck([](const auto& in) { return veil::layer_norm(in[0], {3, 4}, in[1], in[2], 1e-3); },
                                  {x, weight, bias});
    INFO(result.message);
    CHECK(result.passed);
  }
  SECTION("no weight and no bias") {
    auto x = veil::randn<double>({4, 6}, gen).set_requires_grad(true);
    auto result = veil::gradcheck([](const auto& in) { return veil::layer_norm(in[0], {6}); }, {x});
    INFO(result.message);
    CHECK(result.passed);
  }
  SECTION("weight only, x not requiring grad") {
    auto x = veil::randn<double>({3, 4}, gen);
    auto weight = veil::randn<double>({4}, gen).set_requires_grad(true);
    auto result = veil::gradcheck(
        [](const auto& in) { return veil::layer_norm(in[0], {4}, in[1], Tensor<double>()); }, {x, weight});
    INFO(result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("layer_norm gives the same values and gradients for non-contiguous inputs", "[ops][layer_norm]") {
  veil::Generator gen(5);
  // x: [3, 4] as the transpose of a [4, 3] tensor; weight and bias: every other element of [8].
  auto x_strided = veil::randn<double>({4, 3}, gen).transpose(0, 1).detach().set_requires_grad(true);
  auto weight_strided = veil::slice(veil::randn<double>({8}, gen), 0, 0, 8, 2).detach().set_requires_grad(true);
  auto bias_strided = veil::slice(veil::randn<double>({8}, gen), 0, 1, 8, 2).detach().set_requires_grad(true);
  REQUIRE_FALSE(x_strided.is_contiguous());
  REQUIRE_FALSE(weight_strided.is_contiguous());
  auto x = veil::detail::copy_contiguous(x_strided).set_requires_grad(true);
  auto weight = veil::detail::copy_contiguous(weight_strided).set_requires_grad(true);
  auto bias = veil::detail::copy_contiguous(bias_strided).set_requires_grad(true);
  auto grad_output = veil::randn<double>({4, 3}, gen).transpose(0, 1);  // non-contiguous upstream gradient too

  auto y_strided = veil::layer_norm(x_strided, {4}, weight_strided, bias_strided);
  auto y = veil::layer_norm(x, {4}, weight, bias);
  CHECK(y_strided.to_vector() == y.to_vector());
  y_strided.backward(grad_output);
  y.backward(grad_output);
  CHECK(x_strided.grad().to_vector() == x.grad().to_vector());
  CHECK(weight_strided.grad().to_vector() == weight.grad().to_vector());
  CHECK(bias_strided.grad().to_vector() == bias.grad().to_vector());
}

TEST_CASE("layer_norm backward twice on a retained graph is bit-identical", "[ops][layer_norm]") {
  veil::Generator gen(8);
  auto x = veil::randn<double>({6, 5}, gen).set_requires_grad(true);
  auto weight = veil::randn<double>({5}, gen).set_requires_grad(true);
  auto bias = veil::randn<double>({5}, gen).set_requires_grad(true);
  auto grad_output = veil::randn<double>({6, 5}, gen);
  auto y = veil::layer_norm(x, {5}, weight, bias);
  y.backward(grad_output, /*retain_graph=*/true);
  const auto dx = x.grad().to_vector(), dweight = weight.grad().to_vector(), dbias = bias.grad().to_vector();
  x.zero_grad();
  weight.zero_grad();
  bias.zero_grad();
  y.backward(grad_output);
  CHECK(x.grad().to_vector() == dx);
  CHECK(weight.grad().to_vector() == dweight);
  CHECK(bias.grad().to_vector() == dbias);
}

TEST_CASE("layer_norm values and gradients do not depend on the thread count", "[ops][layer_norm]") {
  // 4096 rows of 64: enough rows for parallel_for to split both loops and for many row blocks.
  veil::Generator gen(21);
  const auto x0 = veil::randn<float>({4096, 64}, gen);
  const auto weight0 = veil::randn<float>({64}, gen);
  const auto bias0 = veil::randn<float>({64}, gen);
  const auto grad_output = veil::randn<float>({4096, 64}, gen);
  const int threads_before = veil::num_threads();
  std::vector<std::vector<float>> results[2];
  for (int run = 0; run < 2; ++run) {
    veil::set_num_threads(run + 1);
    auto x = veil::detail::copy_contiguous(x0).set_requires_grad(true);
    auto weight = veil::detail::copy_contiguous(weight0).set_requires_grad(true);
    auto bias = veil::detail::copy_contiguous(bias0).set_requires_grad(true);
    auto y = veil::layer_norm(x, {64}, weight, bias);
    y.backward(grad_output);
    results[run] = {y.to_vector(), x.grad().to_vector(), weight.grad().to_vector(), bias.grad().to_vector()};
  }
  veil::set_num_threads(threads_before);
  CHECK(results[0] == results[1]);
}

TEST_CASE("layer_norm in float keeps the variance of rows with a large common offset", "[ops][layer_norm]") {
  // A one-pass E[x^2] - E[x]^2 in float loses every digit here (x^2 ~ 1e8, variance ~ 1); the
  // two-pass double statistics match the double computation on the same float-rounded inputs.
  veil::Generator gen(4);
  auto x_float = veil::randn<float>({8, 32}, gen, 1e4f, 1.0f);
  std::vector<double> widened;
  for (float v : x_float.to_vector()) widened.push_back(v);
  auto y_float = veil::layer_norm(x_float, {32}).to_vector();
  auto y_double = veil::layer_norm(veil::from_vector<double>(widened, {8, 32}), {32}).to_vector();
  for (std::size_t i = 0; i < y_float.size(); ++i) CHECK(y_float[i] == Approx(y_double[i]).margin(1e-6));
}

TEST_CASE("layer_norm rejects mismatched shapes and a negative eps", "[ops][layer_norm][errors]") {
  auto x = veil::zeros<double>({2, 3});
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {4}), veil::ShapeError,
                         MessageContains("must end in normalized_shape [4], but its trailing dimensions are [3]"));
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {1, 2, 3}), veil::ShapeError,
                         MessageContains("input of shape [2, 3] has fewer dimensions than normalized_shape [1, 2, 3]"));
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {}), veil::ShapeError, MessageContains("at least one dimension"));
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {3}, veil::ones<double>({2})), veil::ShapeError,
                         MessageContains("weight must have shape [3] (normalized_shape), got [2]"));
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {3}, Tensor<double>(), veil::ones<double>({3, 1})), veil::ShapeError,
                         MessageContains("bias must have shape [3] (normalized_shape), got [3, 1]"));
  REQUIRE_THROWS_MATCHES(veil::layer_norm(x, {3}, Tensor<double>(), Tensor<double>(), -1.0), veil::ValueError,
                         MessageContains("eps must be finite and >= 0, got -1"));
}

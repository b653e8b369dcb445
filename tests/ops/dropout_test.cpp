#include <veil/ops.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cmath>
#include <limits>
#include <vector>

using veil::Tensor;
using veil_test::MessageContains;

TEST_CASE("dropout zeroes elements and scales the kept ones by 1/(1 - p)", "[ops][dropout]") {
  veil::Generator gen(1);
  auto x = veil::arange<double>(1, 101).set_requires_grad(true);
  auto y = veil::dropout(x, 0.75, true, gen);
  const auto in = x.to_vector(), out = y.to_vector();
  int kept = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    CHECK((out[i] == 0.0 || out[i] == in[i] * 4.0));
    kept += out[i] != 0.0;
  }
  CHECK(kept > 0);
  CHECK(kept < 100);
  // The gradient uses the forward's mask and scale: 4 where kept, exactly 0 where dropped.
  y.backward(veil::ones<double>({100}));
  const auto grad = x.grad().to_vector();
  for (std::size_t i = 0; i < out.size(); ++i) CHECK(grad[i] == (out[i] != 0.0 ? 4.0 : 0.0));
}

TEST_CASE("dropout keeps a fraction 1 - p of a large tensor", "[ops][dropout]") {
  veil::Generator gen(2024);
  for (double p : {0.1, 0.5, 0.9}) {
    auto y = veil::dropout(veil::ones<float>({1 << 20}), p, true, gen);
    double kept = 0;
    for (float v : y.to_vector()) kept += v != 0.0f;
    // 2^20 Bernoulli draws: the standard deviation of the fraction is <= 0.0005, so 0.01 is 20 sigma.
    CHECK(kept / (1 << 20) == Approx(1.0 - p).margin(0.01));
  }
}

TEST_CASE("dropout draws the same mask from the same seed and counter", "[ops][dropout]") {
  auto x = veil::ones<double>({1000});
  veil::Generator a(77), b(77);
  const auto first = veil::dropout(x, 0.5, true, a).to_vector();
  CHECK(veil::dropout(x, 0.5, true, b).to_vector() == first);
  CHECK(a.counter() == 1000);  // the generator advances by one draw per element
  CHECK(veil::dropout(x, 0.5, true, a).to_vector() != first);  // the next call draws a fresh mask
  veil::Generator other_seed(78);
  CHECK(veil::dropout(x, 0.5, true, other_seed).to_vector() != first);
}

TEST_CASE("dropout output does not depend on the thread count", "[ops][dropout]") {
  veil::Generator data(5);
  const auto x0 = veil::randn<float>({300000}, data);  // several parallel_for chunks
  const auto grad_output = veil::randn<float>({300000}, data);
  const int threads_before = veil::num_threads();
  std::vector<std::vector<float>> results[2];
  for (int run = 0; run < 2; ++run) {
    veil::set_num_threads(run + 1);
    veil::Generator gen(99);
    auto x = veil::detail::copy_contiguous(x0).set_requires_grad(true);
    auto y = veil::dropout(x, 0.3, true, gen);
    y.backward(grad_output);
    results[run] = {y.to_vector(), x.grad().to_vector()};
  }
  veil::set_num_threads(threads_before);
  CHECK(results[0] == results[1]);
}

TEST_CASE("dropout passes gradcheck with a fixed seed", "[ops][dropout][gradcheck]") {
  veil::Generator data(3);
  auto x = veil::randn<double>({4, 5}, data).set_requires_grad(true);
  auto result = veil::gradcheck(
      [](const auto& in) {
        veil::Generator gen(12);  // same mask on every call, as gradcheck requires
        return veil::dropout(in[0], 0.4, true, gen);
      },
      {x});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("dropout masks a non-contiguous input by row-major position like its contiguous copy", "[ops][dropout]") {
  veil::Generator data(4);
  auto x_strided = veil::randn<double>({6, 4}, data).transpose(0, 1).detach().set_requires_grad(true);
  auto x = veil::detail::copy_contiguous(x_strided).set_requires_grad(true);
  REQUIRE_FALSE(x_strided.is_contiguous());
  auto grad_output = veil::randn<double>({6, 4}, data).transpose(0, 1);
  veil::Generator a(31), b(31);
  auto y_strided = veil::dropout(x_strided, 0.5, true, a);
  auto y = veil::dropout(x, 0.5, true, b);
  CHECK(y_strided.to_vector() == y.to_vector());
  y_strided.backward(grad_output);
  y.backward(grad_output);
  CHECK(x_strided.grad().to_vector() == x.grad().to_vector());
}

TEST_CASE("dropout backward twice on a retained graph is bit-identical", "[ops][dropout]") {
  veil::Generator gen(8);
  auto x = veil::randn<double>({50}, gen).set_requires_grad(true);
  auto grad_output = veil::randn<double>({50}, gen);
  auto y = veil::dropout(x, 0.2, true, gen);
  y.backward(grad_output, /*retain_graph=*/true);
  const auto first = x.grad().to_vector();
  x.zero_grad();
  y.backward(grad_output);
  CHECK(x.grad().to_vector() == first);
}

TEST_CASE("dropout is the identity in evaluation mode and for p = 0", "[ops][dropout]") {
  veil::Generator gen(6);
  auto x = veil::randn<double>({3, 3}, gen).set_requires_grad(true);
  const auto counter_before = gen.counter();
  for (auto [p, training] : {std::pair{0.5, false}, std::pair{0.0, true}}) {
    auto y = veil::dropout(x, p, training, gen);
    CHECK(y.shares_storage_with(x));
    CHECK(y.to_vector() == x.to_vector());
  }
  CHECK(gen.counter() == counter_before);  // the identity paths draw nothing
}

TEST_CASE("dropout selects exactly 0 for a dropped NaN", "[ops][dropout]") {
  veil::Generator gen(10);
  auto y = veil::dropout(veil::full<double>({200}, std::numeric_limits<double>::quiet_NaN()), 0.5, true, gen);
  int zeros = 0;
  for (double v : y.to_vector()) zeros += v == 0.0;
  CHECK(zeros > 0);
}

TEST_CASE("dropout rejects p outside the half-open unit interval and names p", "[ops][dropout][errors]") {
  veil::Generator gen(0);
  auto x = veil::ones<double>({4});
  REQUIRE_THROWS_MATCHES(veil::dropout(x, 1.0, true, gen), veil::ValueError,
                         MessageContains("dropout: p must be in [0, 1), got p = 1"));
  REQUIRE_THROWS_MATCHES(veil::dropout(x, -0.1, false, gen), veil::ValueError,
                         MessageContains("dropout: p must be in [0, 1), got p = -0.1"));
  REQUIRE_THROWS_MATCHES(veil::dropout(x, std::nan(""), true, gen), veil::ValueError,
                         MessageContains("dropout: p must be in [0, 1), got p = nan"));
}

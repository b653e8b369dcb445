#include <veil/veil.hpp>

#include <catch2/catch.hpp>

using veil::Tensor;

TEST_CASE("add broadcasts a row over a matrix and sums the gradient back", "[ops][elementwise]") {
  auto a = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  auto b = veil::from_vector<double>({10, 20, 30}, {3});
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  auto y = a + b;
  CHECK(y.to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  y.backward(veil::ones<double>({2, 3}));
  CHECK(a.grad().to_vector() == std::vector<double>(6, 1.0));
  CHECK(b.grad().to_vector() == std::vector<double>{2, 2, 2});
}

TEST_CASE("gelu passes gradcheck in both forms", "[ops][elementwise]") {
  veil::Generator gen(1);
  auto x = veil::randn<double>({3, 4}, gen).set_requires_grad(true);
  for (auto form : {veil::GeluApproximation::none, veil::GeluApproximation::tanh}) {
    auto result = veil::gradcheck([form](const auto& in) { return veil::gelu(in[0], form); }, {x});
    INFO(result.message);
    CHECK(result.passed);
  }
}

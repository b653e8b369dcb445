#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <vector>

using veil::Tensor;

namespace {

using Inputs = std::vector<Tensor<double>>;

/// y = a + b*b with a deliberately wrong gradient for b: grad * b instead of 2 * b * grad.
Tensor<double> wrong_square_add(const Tensor<double>& a, const Tensor<double>& b) {
  Tensor<double> out = veil::detail::map_binary(a, b, [](double x, double y) { return x + y * y; }, "wrong");
  return veil::autograd::record<double>("wrong_square_add", out, {&a, &b},
                                        [b = b.detach()](const Tensor<double>& grad) {
    const auto times = [](double g, double y) { return g * y; };
    return std::vector<Tensor<double>>{grad, veil::detail::map_binary(grad, b, times, "wrong")};
  });
}

/// y = x*x with the right gradient 2 x grad, written the same way.
Tensor<double> right_square(const Tensor<double>& x) {
  Tensor<double> out = veil::detail::map_unary(x, [](double v) { return v * v; });
  return veil::autograd::record<double>("right_square", out, {&x}, [x = x.detach()](const Tensor<double>& grad) {
    return std::vector<Tensor<double>>{
        veil::detail::map_binary(grad, x, [](double g, double v) { return 2 * v * g; }, "right")};
  });
}

}  // namespace

TEST_CASE("gradcheck passes on mul with broadcasting", "[autograd][gradcheck]") {
  veil::Generator gen(1);
  auto a = veil::randn<double>({3, 4}, gen).set_requires_grad(true);
  auto b = veil::randn<double>({4}, gen).set_requires_grad(true);
  auto result = veil::gradcheck([](const Inputs& in) { return in[0] * in[1]; }, {a, b});
  INFO(result.message);
  CHECK(result.passed);
  CHECK(result.message.empty());
  CHECK(static_cast<bool>(result));
}

TEST_CASE("gradcheck passes on exp", "[autograd][gradcheck]") {
  veil::Generator gen(2);
  auto x = veil::randn<double>({2, 5}, gen).set_requires_grad(true);
  auto result = veil::gradcheck([](const Inputs& in) { return veil::exp(in[0]); }, {x});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("gradcheck passes on reshape and permute chains", "[autograd][gradcheck]") {
  veil::Generator gen(3);
  auto x = veil::randn<double>({2, 3, 4}, gen).set_requires_grad(true);
  auto w = veil::randn<double>({4, 3}, gen).set_requires_grad(true);
  auto result = veil::gradcheck(
      [](const Inputs& in) {
        auto y = in[0].permute({0, 2, 1}).reshape({8, 3}).transpose(0, 1);  // [3, 8], non-contiguous
        auto z = y.reshape({3, 2, 4}).permute({1, 2, 0}) * in[1];            // [2, 4, 3] * [4, 3]
        return veil::exp(veil::slice(z, 1, 0, 4, 2) * 0.5);
      },
      {x, w});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("gradcheck passes on a correct custom op built with record", "[autograd][gradcheck]") {
  auto x = veil::from_vector<double>({1.0, -2.0, 0.5}).set_requires_grad(true);
  auto result = veil::gradcheck([](const Inputs& in) { return right_square(in[0]); }, {x});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("gradcheck fails on a wrong custom op and names the input and element", "[autograd][gradcheck]") {
  // Input 0 (a) has the right gradient; input 1 (b) gets grad * b instead of 2 b grad. b[0] = 0
  // makes element 0 agree by accident, so the first mismatch is input 1, element 1.
  auto a = veil::from_vector<double>({1.0, 2.0, 3.0}).set_requires_grad(true);
  auto b = veil::from_vector<double>({0.0, 1.5, -2.0}).set_requires_grad(true);
  auto result = veil::gradcheck([](const Inputs& in) { return wrong_square_add(in[0], in[1]); }, {a, b});
  CHECK_FALSE(result.passed);
  CHECK_FALSE(static_cast<bool>(result));
  CHECK_THAT(result.message, Catch::Contains("input 1") && Catch::Contains("element 1") &&
                                 Catch::Contains("analytic 1.5") && Catch::Contains("numeric 3"));
  // With b not requiring grad only a is checked, and a's gradient is right.
  auto constant_b = veil::from_vector<double>({0.0, 1.5, -2.0});
  auto only_a = veil::gradcheck([](const Inputs& in) { return wrong_square_add(in[0], in[1]); }, {a, constant_b});
  INFO(only_a.message);
  CHECK(only_a.passed);
}

TEST_CASE("gradcheck fails on the classic wrong square: grad times x instead of 2 x grad", "[autograd][gradcheck]") {
  auto x = veil::from_vector<double>({2.0, 3.0}).set_requires_grad(true);
  auto result = veil::gradcheck(
      [](const Inputs& in) {
        const Tensor<double>& v = in[0];
        Tensor<double> out = veil::detail::map_unary(v, [](double e) { return e * e; });
        return veil::autograd::record<double>("bad_square", out, {&v}, [v = v.detach()](const Tensor<double>& grad) {
          return std::vector<Tensor<double>>{grad * v};
        });
      },
      {x});
  CHECK_FALSE(result.passed);
  CHECK_THAT(result.message, Catch::StartsWith("gradcheck: input 0, element 0"));
}

TEST_CASE("gradcheck leaves the caller's tensors untouched", "[autograd][gradcheck]") {
  auto x = veil::from_vector<double>({0.25, -1.0, 2.0}).set_requires_grad(true);
  const auto before = x.to_vector();
  auto result = veil::gradcheck([](const Inputs& in) { return veil::exp(in[0]) * in[0]; }, {x});
  CHECK(result.passed);
  CHECK(x.to_vector() == before);
  CHECK_FALSE(x.grad().defined());
}

#include <veil/autograd.hpp>
#include <veil/ops/elementwise.hpp>
#include <veil/ops/shape_ops.hpp>

#include <catch2/catch.hpp>

#include "support/forward_backward.hpp"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>

#include "support/message_contains.hpp"

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

// ---- shared checks -----------------------------------------------------------------------------

namespace {

using veil::Index;
using veil::Shape;
using veil_test::MessageContains;
using Fn = veil_test::Function;

using veil_test::Outcome;

constexpr auto* run = &veil_test::run_forward_backward;

void check_gradcheck(const Fn& fn, const std::vector<Tensor<double>>& inputs) {
  std::vector<Tensor<double>> leaves;
  for (const auto& input : inputs) leaves.push_back(veil::detail::copy_contiguous(input).set_requires_grad(true));
  const auto result = veil::gradcheck(fn, leaves);
  INFO(result.message);
  CHECK(result.passed);
}

/// Views (transposed, strided) must give the same forward values and gradients as contiguous copies.
void check_views_match_copies(const Fn& fn, const std::vector<Tensor<double>>& views) {
  std::vector<Tensor<double>> copies;
  for (const auto& view : views) copies.push_back(veil::detail::copy_contiguous(view));
  const Outcome a = run(fn, views), b = run(fn, copies);
  CHECK(a.out == b.out);
  CHECK(a.grads == b.grads);
}

/// Backward twice over one retained graph, grads zeroed in between: identical bits.
void check_backward_twice(const Fn& fn, const std::vector<Tensor<double>>& inputs) {
  std::vector<Tensor<double>> leaves;
  for (const auto& input : inputs) leaves.push_back(veil::detail::copy_contiguous(input).set_requires_grad(true));
  auto y = fn(leaves);
  veil::Generator gen(5);
  auto g = veil::randn<double>(y.shape(), gen);
  y.backward(g, /*retain_graph=*/true);
  std::vector<std::vector<double>> first;
  for (auto& leaf : leaves) {
    first.push_back(leaf.grad().to_vector());
    leaf.zero_grad();
  }
  y.backward(g, /*retain_graph=*/true);
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    const auto second = leaves[i].grad().to_vector();
    REQUIRE(second.size() == first[i].size());
    CHECK(std::memcmp(first[i].data(), second.data(), second.size() * sizeof(double)) == 0);
  }
}

/// f(a[ia], b[ib]) for every output index of the broadcast shape, through at(): an independent
/// spelling of NumPy broadcasting.
template <class F>
std::vector<double> broadcast_reference(const Tensor<double>& a, const Tensor<double>& b, const Shape& shape, F f) {
  std::vector<double> out;
  const Index count = veil::numel_of(shape);
  for (Index linear = 0; linear < count; ++linear) {
    Shape index(shape.size());
    Index rest = linear;
    for (std::size_t d = shape.size(); d-- > 0;) {
      index[d] = rest % shape[d];
      rest /= shape[d];
    }
    const auto pick = [&](const Tensor<double>& t) {
      Shape at(static_cast<std::size_t>(t.dim()));
      for (std::size_t d = 0; d < at.size(); ++d) {
        const Index i = index[shape.size() - at.size() + d];
        at[d] = t.shape()[d] == 1 ? 0 : i;
      }
      return t.at(at);
    };
    out.push_back(f(pick(a), pick(b)));
  }
  return out;
}

struct BinaryCase {
  const char* name;
  Fn fn;
  double (*reference)(double, double);
};

const std::vector<BinaryCase>& binary_cases() {
  static const std::vector<BinaryCase> cases{
      {"add", [](const auto& in) { return in[0] + in[1]; }, [](double x, double y) { return x + y; }},
      {"sub", [](const auto& in) { return in[0] - in[1]; }, [](double x, double y) { return x - y; }},
      {"mul", [](const auto& in) { return in[0] * in[1]; }, [](double x, double y) { return x * y; }},
      {"div", [](const auto& in) { return in[0] / in[1]; }, [](double x, double y) { return x / y; }},
  };
  return cases;
}

/// Values in [0.5, 1.5] + small offsets: safe as divisors and distinct.
Tensor<double> positive(const Shape& shape, veil::Generator& gen) { return veil::rand<double>(shape, gen, 0.5, 1.5); }

}  // namespace

// ---- binary arithmetic -------------------------------------------------------------------------

TEST_CASE("sub, mul and div match hand-computed values with a broadcast row", "[ops][elementwise]") {
  auto a = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  auto b = veil::from_vector<double>({2, 4, 8}, {3});
  CHECK((a - b).to_vector() == std::vector<double>{-1, -2, -5, 2, 1, -2});
  CHECK((a * b).to_vector() == std::vector<double>{2, 8, 24, 8, 20, 48});
  CHECK((a / b).to_vector() == std::vector<double>{0.5, 0.5, 0.375, 2, 1.25, 0.75});
  CHECK(veil::sub(b, a).to_vector() == std::vector<double>{1, 2, 5, -2, -1, 2});
  CHECK(veil::div(b, a).to_vector() == std::vector<double>{2, 2, 8.0 / 3, 0.5, 0.8, 8.0 / 6});
}

TEST_CASE("binary ops broadcast every pair of compatible shapes like NumPy", "[ops][elementwise]") {
  const std::vector<std::pair<Shape, Shape>> pairs{
      {{2, 3}, {2, 3}}, {{2, 3}, {3}}, {{2, 1}, {1, 3}}, {{3, 1, 2}, {4, 1}}, {{}, {2, 3}},
      {{2, 3}, {}}, {{1}, {2, 2}}, {{2, 1, 1}, {1, 1, 3}}};
  veil::Generator gen(21);
  for (const auto& [sa, sb] : pairs) {
    auto a = positive(sa, gen), b = positive(sb, gen);
    const Shape shape = veil::broadcast_shapes(sa, sb);
    for (const auto& op : binary_cases()) {
      INFO(op.name << " " << veil::to_string(sa) << " with " << veil::to_string(sb));
      auto y = op.fn({a, b});
      CHECK(y.shape() == shape);
      CHECK(y.to_vector() == broadcast_reference(a, b, shape, op.reference));
      check_gradcheck(op.fn, {a, b});
    }
  }
}

TEST_CASE("binary ops with a zero-size dimension give empty results and zero gradients", "[ops][elementwise]") {
  const std::vector<std::tuple<Shape, Shape, Shape>> pairs{
      {{0, 3}, {3}, {0, 3}}, {{2, 0}, {2, 1}, {2, 0}}, {{0}, {1}, {0}}, {{1, 0}, {4, 1}, {4, 0}}};
  for (const auto& [sa, sb, expected] : pairs) {
    for (const auto& op : binary_cases()) {
      INFO(op.name << " " << veil::to_string(sa) << " with " << veil::to_string(sb));
      const Outcome outcome = run(op.fn, {veil::ones<double>(sa), veil::ones<double>(sb)});
      CHECK(outcome.out.empty());
      CHECK(outcome.grads[0].size() == static_cast<std::size_t>(veil::numel_of(sa)));
      // Nothing flowed into b: its gradient is all zeros of its own shape.
      CHECK(outcome.grads[1] == std::vector<double>(static_cast<std::size_t>(veil::numel_of(sb)), 0.0));
      CHECK(op.fn({veil::ones<double>(sa), veil::ones<double>(sb)}).shape() == expected);
    }
  }
}

TEST_CASE("binary ops reject shapes that do not broadcast, naming both", "[ops][elementwise]") {
  auto a = veil::zeros<double>({2, 3});
  auto b = veil::zeros<double>({4});
  REQUIRE_THROWS_MATCHES(a + b, veil::ShapeError, MessageContains("[2, 3]") && MessageContains("[4]"));
  REQUIRE_THROWS_MATCHES(a - b, veil::ShapeError, MessageContains("sub") && MessageContains("3 vs 4"));
  REQUIRE_THROWS_MATCHES(veil::mul(veil::zeros<double>({0, 3}), veil::zeros<double>({2, 3})), veil::ShapeError,
                         MessageContains("[0, 3]") && MessageContains("[2, 3]"));
  REQUIRE_THROWS_MATCHES(b / a, veil::ShapeError, MessageContains("div"));
}

TEST_CASE("binary ops on transposed and strided views match contiguous copies", "[ops][elementwise]") {
  veil::Generator gen(22);
  auto a = veil::transpose(positive({3, 2}, gen), 0, 1);                   // [2, 3], strides [1, 2]
  auto b = veil::slice(positive({2, 6}, gen), 1, 0, 6, 2);                 // [2, 3], strides [6, 2]
  auto row = veil::slice(positive({6}, gen), 0, 1, 6, 2);                  // [3], stride 2
  auto expanded = veil::expand(positive({2, 1}, gen), {2, 3});             // stride 0
  for (const auto& op : binary_cases()) {
    INFO(op.name);
    check_views_match_copies(op.fn, {a, b});
    check_views_match_copies(op.fn, {a, row});
    check_views_match_copies(op.fn, {expanded, a});
  }
}

TEST_CASE("binary op backward on a retained graph gives identical gradients twice", "[ops][elementwise]") {
  veil::Generator gen(23);
  for (const auto& op : binary_cases()) {
    INFO(op.name);
    check_backward_twice(op.fn, {positive({3, 4}, gen), positive({4}, gen)});
  }
}

TEST_CASE("mul and div compute only the gradients their inputs need", "[ops][elementwise]") {
  auto a = veil::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  auto b = veil::from_vector<double>({4, 8}, {2});
  (a * b).backward(veil::ones<double>({2}));
  CHECK(a.grad().to_vector() == std::vector<double>{4, 8});
  CHECK_FALSE(b.grad().defined());
  auto c = veil::from_vector<double>({4, 8}, {2}).set_requires_grad(true);
  (b / c).backward(veil::ones<double>({2}));  // d(b / c)/dc = −b / c² = −1/4, −1/8
  CHECK(c.grad().to_vector() == std::vector<double>{-0.25, -0.125});
}

// ---- scalar arithmetic -------------------------------------------------------------------------

TEST_CASE("scalar arithmetic matches hand-computed values and gradients", "[ops][elementwise]") {
  auto x = veil::from_vector<double>({1, 2, 4}, {3});
  CHECK((x + 2.0).to_vector() == std::vector<double>{3, 4, 6});
  CHECK((2.0 + x).to_vector() == std::vector<double>{3, 4, 6});
  CHECK((x - 2.0).to_vector() == std::vector<double>{-1, 0, 2});
  CHECK((2.0 - x).to_vector() == std::vector<double>{1, 0, -2});
  CHECK((x * 3.0).to_vector() == std::vector<double>{3, 6, 12});
  CHECK((3.0 * x).to_vector() == std::vector<double>{3, 6, 12});
  CHECK((x / 4.0).to_vector() == std::vector<double>{0.25, 0.5, 1});
  CHECK((4.0 / x).to_vector() == std::vector<double>{4, 2, 1});
  CHECK((-x).to_vector() == std::vector<double>{-1, -2, -4});

  const std::vector<std::pair<const char*, Fn>> ops{
      {"x + s", [](const auto& in) { return in[0] + 2.5; }}, {"s + x", [](const auto& in) { return 2.5 + in[0]; }},
      {"x - s", [](const auto& in) { return in[0] - 2.5; }}, {"s - x", [](const auto& in) { return 2.5 - in[0]; }},
      {"x * s", [](const auto& in) { return in[0] * 2.5; }}, {"s * x", [](const auto& in) { return 2.5 * in[0]; }},
      {"x / s", [](const auto& in) { return in[0] / 2.5; }}, {"s / x", [](const auto& in) { return 2.5 / in[0]; }},
      {"neg", [](const auto& in) { return veil::neg(in[0]); }}};
  veil::Generator gen(24);
  auto base = positive({4, 3}, gen);
  for (const auto& [name, fn] : ops) {
    INFO(name);
    check_gradcheck(fn, {base});
    check_views_match_copies(fn, {veil::transpose(base, 0, 1)});
    check_backward_twice(fn, {base});
  }
  // Gradients by hand: d(s / x)/dx = −s / x².
  auto leaf = veil::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  (4.0 / leaf).backward(veil::ones<double>({2}));
  CHECK(leaf.grad().to_vector() == std::vector<double>{-4, -1});
}

// ---- unary functions ---------------------------------------------------------------------------

TEST_CASE("unary functions match their closed forms at hand-picked points", "[ops][elementwise]") {
  auto x = veil::from_vector<double>({0, 1, 4}, {3});
  CHECK(veil::exp(x).to_vector() == std::vector<double>{1, std::exp(1.0), std::exp(4.0)});
  CHECK(veil::log(x).to_vector() == std::vector<double>{-std::numeric_limits<double>::infinity(), 0, std::log(4.0)});
  CHECK(veil::sqrt(x).to_vector() == std::vector<double>{0, 1, 2});
  CHECK(veil::pow(x, 3.0).to_vector() == std::vector<double>{0, 1, 64});
  CHECK(veil::pow(x, 0.5).to_vector() == std::vector<double>{0, 1, 2});
  CHECK(veil::pow(x, 0.0).to_vector() == std::vector<double>{1, 1, 1});
  auto s = veil::from_vector<double>({-1000, -1, 0, 1, 1000}, {5});
  const auto tanh = veil::tanh(s).to_vector();
  CHECK(tanh == std::vector<double>{-1, std::tanh(-1.0), 0, std::tanh(1.0), 1});
  const auto sigmoid = veil::sigmoid(s).to_vector();
  CHECK(sigmoid[0] == 0);  // exp(1000) overflows to inf; 1 / (1 + inf) is still exactly 0, not NaN
  CHECK(sigmoid[1] == Approx(0.2689414213699951).epsilon(1e-15));
  CHECK(sigmoid[2] == 0.5);
  CHECK(sigmoid[3] == Approx(0.7310585786300049).epsilon(1e-15));
  CHECK(sigmoid[4] == 1);
  CHECK(veil::relu(s).to_vector() == std::vector<double>{0, 0, 0, 1, 1000});
  // GELU(1) = Φ(1) = 0.8413447460685429; the tanh form gives 0.8411919906082768.
  auto one = veil::from_vector<double>({-1, 0, 1}, {3});
  const auto exact = veil::gelu(one).to_vector();
  CHECK(exact[0] == Approx(-0.15865525393145707).epsilon(1e-14));
  CHECK(exact[1] == 0);
  CHECK(exact[2] == Approx(0.8413447460685429).epsilon(1e-14));
  const auto approx = veil::gelu(one, veil::GeluApproximation::tanh).to_vector();
  CHECK(approx[0] == Approx(-0.15880800939172324).epsilon(1e-14));
  CHECK(approx[2] == Approx(0.8411919906082768).epsilon(1e-14));
}

TEST_CASE("relu's gradient at 0 is 0 and sigmoid's slope is y(1 - y)", "[ops][elementwise]") {
  auto x = veil::from_vector<double>({-1, 0, 2}, {3}).set_requires_grad(true);
  veil::relu(x).backward(veil::ones<double>({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0, 1});
  auto z = veil::from_vector<double>({0}, {1}).set_requires_grad(true);
  veil::sigmoid(z).backward(veil::ones<double>({1}));
  CHECK(z.grad().to_vector() == std::vector<double>{0.25});
}

TEST_CASE("unary functions pass gradcheck, match on views, and repeat backward exactly", "[ops][elementwise]") {
  const std::vector<std::pair<const char*, Fn>> ops{
      {"exp", [](const auto& in) { return veil::exp(in[0]); }},
      {"log", [](const auto& in) { return veil::log(in[0]); }},
      {"sqrt", [](const auto& in) { return veil::sqrt(in[0]); }},
      {"pow 3", [](const auto& in) { return veil::pow(in[0], 3.0); }},
      {"pow -1.5", [](const auto& in) { return veil::pow(in[0], -1.5); }},
      {"pow 0", [](const auto& in) { return veil::pow(in[0], 0.0); }},
      {"tanh", [](const auto& in) { return veil::tanh(in[0]); }},
      {"sigmoid", [](const auto& in) { return veil::sigmoid(in[0]); }},
      {"relu", [](const auto& in) { return veil::relu(in[0]); }},
      {"gelu", [](const auto& in) { return veil::gelu(in[0]); }},
      {"gelu tanh", [](const auto& in) { return veil::gelu(in[0], veil::GeluApproximation::tanh); }}};
  veil::Generator gen(25);
  // Positive inputs keep log, sqrt and fractional pow in their domain; relu's kink at 0 is avoided
  // by mixing in negative values at least 0.5 away from it.
  auto pos = positive({4, 3}, gen);
  auto mixed = veil::where(veil::from_vector<bool>({true, false, true, false, false, true, true, false, true, false, true, false}, {4, 3}), pos, -pos);
  for (const auto& [name, fn] : ops) {
    INFO(name);
    const bool positive_only = std::string(name) == "log" || std::string(name) == "sqrt" || std::string(name).rfind("pow", 0) == 0;
    auto input = positive_only ? pos : mixed;
    check_gradcheck(fn, {input});
    check_views_match_copies(fn, {veil::transpose(input, 0, 1)});
    check_views_match_copies(fn, {veil::slice(input, 0, 0, 4, 2)});
    check_backward_twice(fn, {input});
  }
}

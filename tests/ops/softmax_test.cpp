#include <veil/autograd.hpp>
#include <veil/ops/shape_ops.hpp>
#include <veil/ops/softmax.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil_test::MessageContains;

namespace {

using Op = Tensor<double> (*)(const Tensor<double>&, Index);
constexpr Op softmax_double = &veil::softmax<double>;
constexpr Op log_softmax_double = &veil::log_softmax<double>;

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tolerance = 1e-14) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    CHECK(got[i] == Approx(want[i]).epsilon(tolerance).margin(tolerance));
  }
}

}  // namespace

TEST_CASE("softmax and log_softmax of a row match the closed form", "[ops][softmax]") {
  auto x = veil::from_vector<double>({1, 2, 3}, {3});
  // e^i / (e + e^2 + e^3) and i − log(e + e^2 + e^3), log(e + e^2 + e^3) = 3.40760596444438.
  check_close(veil::softmax(x, 0).to_vector(), {0.09003057317038046, 0.24472847105479764, 0.6652409557748219});
  check_close(veil::log_softmax(x, -1).to_vector(), {-2.40760596444438, -1.40760596444438, -0.40760596444438});
}

TEST_CASE("softmax subtracts the maximum so large inputs do not overflow", "[ops][softmax]") {
  auto x = veil::from_vector<double>({1000, 1001, -1000, -1000}, {2, 2});
  // 1 / (1 + e) and e / (1 + e); equal inputs give 1/2 and log(1/2).
  check_close(veil::softmax(x, 1).to_vector(), {0.2689414213699951, 0.7310585786300049, 0.5, 0.5});
  check_close(veil::log_softmax(x, 1).to_vector(),
              {-1.3132616875182228, -0.3132616875182228, -0.6931471805599453, -0.6931471805599453});
  auto f = veil::from_vector<float>({100, 100}, {2});
  CHECK(veil::softmax(f, 0).to_vector() == std::vector<float>{0.5f, 0.5f});
}

TEST_CASE("softmax along a leading or middle dimension equals softmax of the moved-last tensor", "[ops][softmax]") {
  veil::Generator gen(1);
  // 70 trailing columns: more than one block of the column-blocked kernel.
  auto x = veil::randn<double>({2, 5, 70}, gen);
  for (Op op : {softmax_double, log_softmax_double}) {
    const auto along_middle = op(x, 1).to_vector();
    const auto moved = veil::transpose(op(veil::transpose(x, 1, 2).contiguous(), -1), 1, 2).contiguous().to_vector();
    check_close(along_middle, moved);
    const auto along_first = op(x, 0).to_vector();
    const auto moved_first = veil::permute(op(veil::permute(x, {1, 2, 0}).contiguous(), 2), {2, 0, 1}).contiguous().to_vector();
    check_close(along_first, moved_first);
  }
  auto columns = veil::from_vector<double>({1, 0, 2, 0, 3, 0}, {3, 2});
  check_close(veil::softmax(columns, 0).to_vector(),
              {0.09003057317038046, 1.0 / 3, 0.24472847105479764, 1.0 / 3, 0.6652409557748219, 1.0 / 3});
}

TEST_CASE("softmax follows PyTorch on infinities and NaN", "[ops][softmax]") {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto x = veil::from_vector<double>({0, -inf, -inf, -inf, 1, nan}, {3, 2});
  const auto y = veil::softmax(x, 1).to_vector();
  CHECK(y[0] == 1);
  CHECK(y[1] == 0);
  // A row of only −inf is 0/0 after the max shift: NaN, as in PyTorch (attention has its own kernel).
  CHECK(std::isnan(y[2]));
  CHECK(std::isnan(y[3]));
  CHECK(std::isnan(y[4]));  // NaN anywhere in a row spreads over the row
  CHECK(std::isnan(y[5]));
  const auto log_y = veil::log_softmax(x, 1).to_vector();
  CHECK(log_y[0] == 0);
  CHECK(log_y[1] == -inf);
  CHECK(std::isnan(log_y[2]));
}

TEST_CASE("softmax of 0-d and zero-size tensors", "[ops][softmax]") {
  CHECK(veil::softmax(veil::scalar<double>(3), 0).item() == 1);
  CHECK(veil::log_softmax(veil::scalar<double>(3), -1).item() == 0);
  CHECK(veil::softmax(veil::zeros<double>({0, 3}), 1).shape() == Shape{0, 3});
  CHECK(veil::softmax(veil::zeros<double>({2, 0}), 1).shape() == Shape{2, 0});
  CHECK(veil::log_softmax(veil::zeros<double>({2, 0, 3}), 1).shape() == Shape{2, 0, 3});
}

TEST_CASE("softmax and log_softmax gradients pass gradcheck along every dimension", "[ops][softmax]") {
  veil::Generator gen(2);
  auto x = veil::randn<double>({2, 3, 4}, gen).set_requires_grad(true);
  for (Op op : {softmax_double, log_softmax_double}) {
    for (Index dim : {0, 1, 2, -1}) {
      INFO("dim " << dim << (op == softmax_double ? " softmax" : " log_softmax"));
      const auto result = veil::gradcheck([op, dim](const auto& in) { return op(in[0], dim); }, {x});
      INFO(result.message);
      CHECK(result.passed);
    }
  }
}

TEST_CASE("softmax of a transposed view matches softmax of its contiguous copy", "[ops][softmax]") {
  veil::Generator gen(3);
  auto base = veil::randn<double>({4, 3}, gen);
  auto upstream = veil::randn<double>({3, 4}, gen);
  for (Op op : {softmax_double, log_softmax_double}) {
    for (Index dim : {0, 1}) {
      auto view = veil::transpose(base, 0, 1).detach().set_requires_grad(true);
      auto copy = veil::detail::copy_contiguous(view).set_requires_grad(true);
      REQUIRE_FALSE(view.is_contiguous());
      auto y_view = op(view, dim), y_copy = op(copy, dim);
      CHECK(y_view.to_vector() == y_copy.to_vector());
      y_view.backward(upstream);
      y_copy.backward(upstream);
      CHECK(view.grad().to_vector() == copy.grad().to_vector());
      // A non-contiguous upstream gradient (transposed) gives the same result as its copy.
      auto fresh = copy.detach().set_requires_grad(true);
      op(fresh, dim).backward(veil::transpose(veil::detail::copy_contiguous(veil::transpose(upstream, 0, 1)), 0, 1));
      CHECK(fresh.grad().to_vector() == copy.grad().to_vector());
    }
  }
}

TEST_CASE("softmax backward on a retained graph gives identical gradients twice", "[ops][softmax]") {
  veil::Generator gen(4);
  for (Op op : {softmax_double, log_softmax_double}) {
    auto x = veil::randn<double>({3, 5, 4}, gen).set_requires_grad(true);
    auto y = op(x, 1);
    auto g = veil::randn<double>(y.shape(), gen);
    y.backward(g, /*retain_graph=*/true);
    const auto first = x.grad().to_vector();
    x.zero_grad();
    y.backward(g, /*retain_graph=*/true);
    const auto second = x.grad().to_vector();
    CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)) == 0);
  }
}

TEST_CASE("softmax rejects a dimension outside the tensor's rank", "[ops][softmax]") {
  auto x = veil::zeros<double>({2, 3});
  REQUIRE_THROWS_MATCHES(veil::softmax(x, 2), veil::ValueError, MessageContains("[-2, 1]") && MessageContains("got 2"));
  REQUIRE_THROWS_MATCHES(veil::log_softmax(x, -3), veil::ValueError,
                         MessageContains("[-2, 1]") && MessageContains("got -3"));
}

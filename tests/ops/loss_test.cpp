#include <veil/ops.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

using veil::CrossEntropyOptions;
using veil::Reduction;
using veil::Tensor;
using veil_test::MessageContains;

namespace {

Tensor<std::int64_t> targets_of(const std::vector<std::int64_t>& values, veil::Shape shape) {
  return veil::from_vector<std::int64_t>(values, std::move(shape));
}

}  // namespace

TEST_CASE("cross_entropy matches hand-computed losses and gradients", "[ops][loss]") {
  // Row 0: uniform logits, loss log 3.  Row 1: logits {1, 2, 3}, target 2: loss log(1 + e^-1 + e^-2).
  auto logits = veil::from_vector<double>({0, 0, 0, 1, 2, 3}, {2, 3}).set_requires_grad(true);
  const auto targets = targets_of({0, 2}, {2});
  const double loss0 = std::log(3.0);
  const double loss1 = std::log(1 + std::exp(-1.0) + std::exp(-2.0));

  auto none = veil::cross_entropy(logits, targets, {.reduction = Reduction::none}).to_vector();
  REQUIRE(none.size() == 2);
  CHECK(none[0] == Approx(loss0).epsilon(1e-14));
  CHECK(none[1] == Approx(loss1).epsilon(1e-14));
  CHECK(veil::cross_entropy(logits, targets, {.reduction = Reduction::sum}).item() ==
        Approx(loss0 + loss1).epsilon(1e-14));

  auto mean = veil::cross_entropy(logits, targets);
  CHECK(mean.shape() == veil::Shape{});
  CHECK(mean.item() == Approx((loss0 + loss1) / 2).epsilon(1e-14));
  mean.backward();
  // (softmax - onehot) / 2 per row.
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  const std::vector<double> expected{(1.0 / 3 - 1) / 2, 1.0 / 6, 1.0 / 6,
                                     std::exp(1.0) / z / 2, std::exp(2.0) / z / 2, (std::exp(3.0) / z - 1) / 2};
  const auto grad = logits.grad().to_vector();
  for (std::size_t i = 0; i < grad.size(); ++i) CHECK(grad[i] == Approx(expected[i]).epsilon(1e-14));
}

TEST_CASE("cross_entropy skips ignored targets in the loss and the mean's count and the gradient", "[ops][loss]") {
  veil::Generator gen(3);
  const auto logits0 = veil::randn<double>({4, 5}, gen);
  const auto targets = targets_of({1, -100, 4, 0}, {4});
  auto logits = veil::detail::copy_contiguous(logits0).set_requires_grad(true);
  auto per_row = veil::cross_entropy(logits, targets, {.reduction = Reduction::none}).to_vector();
  CHECK(per_row[1] == 0.0);
  auto mean = veil::cross_entropy(logits, targets);
  CHECK(mean.item() == Approx((per_row[0] + per_row[2] + per_row[3]) / 3).epsilon(1e-14));
  mean.backward();
  const auto grad = logits.grad().to_vector();
  for (int j = 0; j < 5; ++j) CHECK(grad[5 + j] == 0.0);

  SECTION("a custom ignore_index is honoured, and -100 is then an ordinary (out-of-range) target") {
    auto loss = veil::cross_entropy(logits0, targets_of({1, 3, 4, 3}, {4}), {.ignore_index = 3});
    CHECK(loss.item() == Approx((per_row[0] + per_row[2]) / 2).epsilon(1e-14));
    CHECK_THROWS_AS(veil::cross_entropy(logits0, targets, {.ignore_index = 3}), veil::ValueError);
  }
}

TEST_CASE("cross_entropy with every target ignored returns 0 and a zero gradient", "[ops][loss]") {
  // PyTorch returns NaN for the mean over no targets; veil returns 0 (documented in ops/loss.hpp).
  auto logits = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).set_requires_grad(true);
  const auto targets = targets_of({-100, -100}, {2});
  for (auto reduction : {Reduction::mean, Reduction::sum}) {
    logits.zero_grad();
    auto loss = veil::cross_entropy(logits, targets, {.reduction = reduction});
    CHECK(loss.item() == 0.0);
    loss.backward();
    CHECK(logits.grad().to_vector() == std::vector<double>(6, 0.0));
  }
  logits.zero_grad();
  auto per_target = veil::cross_entropy(logits, targets, {.reduction = Reduction::none});
  CHECK(per_target.to_vector() == std::vector<double>{0.0, 0.0});
  per_target.backward(veil::ones<double>({2}));
  CHECK(logits.grad().to_vector() == std::vector<double>(6, 0.0));
}

TEST_CASE("cross_entropy stays finite for huge logits", "[ops][loss]") {
  auto logits = veil::from_vector<float>({1e30f, 0.0f, -1e30f, 5e4f, 5e4f, 5e4f}, {2, 3}).set_requires_grad(true);
  auto loss = veil::cross_entropy(logits, targets_of({0, 1}, {2}), {.reduction = Reduction::none});
  const auto values = loss.to_vector();
  CHECK(values[0] == 0.0f);
  CHECK(values[1] == Approx(std::log(3.0)).epsilon(1e-6));
  loss.backward(veil::ones<float>({2}));
  for (float g : logits.grad().to_vector()) CHECK(std::isfinite(g));
}

TEST_CASE("cross_entropy passes gradcheck for every reduction and for class-last N-d logits",
          "[ops][loss][gradcheck]") {
  veil::Generator gen(17);
  const auto targets = targets_of({0, 3, -100, 2, 1, 3}, {2, 3});
  auto logits = veil::randn<double>({2, 3, 4}, gen).set_requires_grad(true);
  for (auto reduction : {Reduction::none, Reduction::mean, Reduction::sum}) {
    auto result = veil::gradcheck(
        [&](const auto& in) { return veil::cross_entropy(in[0], targets, {.reduction = reduction}); }, {logits});
    INFO("reduction " << static_cast<int>(reduction) << ": " << result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("cross_entropy gives the same loss and gradient for non-contiguous logits and targets", "[ops][loss]") {
  veil::Generator gen(23);
  auto logits_strided = veil::randn<double>({6, 4}, gen).transpose(0, 1).detach().set_requires_grad(true);  // [4, 6]
  auto logits = veil::detail::copy_contiguous(logits_strided).set_requires_grad(true);
  const auto targets_strided = veil::slice(targets_of({5, 9, 0, 9, -100, 9, 2, 9}, {8}), 0, 0, 8, 2);
  const auto targets = veil::detail::copy_contiguous(targets_strided);
  REQUIRE_FALSE(logits_strided.is_contiguous());
  REQUIRE_FALSE(targets_strided.is_contiguous());
  auto loss_strided = veil::cross_entropy(logits_strided, targets_strided);
  auto loss = veil::cross_entropy(logits, targets);
  CHECK(loss_strided.item() == loss.item());
  loss_strided.backward();
  loss.backward();
  CHECK(logits_strided.grad().to_vector() == logits.grad().to_vector());
}

TEST_CASE("cross_entropy backward twice on a retained graph is bit-identical", "[ops][loss]") {
  veil::Generator gen(29);
  auto logits = veil::randn<double>({5, 7}, gen).set_requires_grad(true);
  auto loss = veil::cross_entropy(logits, veil::randint<std::int64_t>({5}, gen, 0, 7));
  loss.backward(/*retain_graph=*/true);
  const auto first = logits.grad().to_vector();
  logits.zero_grad();
  loss.backward();
  CHECK(logits.grad().to_vector() == first);
}

TEST_CASE("cross_entropy loss and gradient do not depend on the thread count", "[ops][loss]") {
  veil::Generator gen(31);
  const auto logits0 = veil::randn<float>({20000, 50}, gen);
  const auto targets = veil::randint<std::int64_t>({20000}, gen, 0, 50);
  const int threads_before = veil::num_threads();
  std::vector<std::vector<float>> results[2];
  for (int run = 0; run < 2; ++run) {
    veil::set_num_threads(run + 1);
    auto logits = veil::detail::copy_contiguous(logits0).set_requires_grad(true);
    auto loss = veil::cross_entropy(logits, targets);
    loss.backward();
    results[run] = {loss.to_vector(), logits.grad().to_vector()};
  }
  veil::set_num_threads(threads_before);
  CHECK(results[0] == results[1]);
}

TEST_CASE("cross_entropy rejects out-of-range targets and mismatched shapes", "[ops][loss][errors]") {
  auto logits = veil::zeros<double>({4, 65});
  REQUIRE_THROWS_MATCHES(veil::cross_entropy(logits, targets_of({0, 1, -100, 70}, {4})), veil::ValueError,
                         MessageContains("cross_entropy: targets[3] = 70 is out of range [0, 65) and is not "
                                         "ignore_index (-100)"));
  REQUIRE_THROWS_MATCHES(veil::cross_entropy(veil::zeros<double>({2, 2, 3}), targets_of({0, 1, -1, 2}, {2, 2})),
                         veil::ValueError, MessageContains("targets[1, 0] = -1 is out of range [0, 3)"));
  REQUIRE_THROWS_MATCHES(veil::cross_entropy(logits, targets_of({0, 1, 2}, {3})), veil::ShapeError,
                         MessageContains("targets must have shape [4] (logits' shape [4, 65] without the class "
                                         "dimension), got [3]"));
  REQUIRE_THROWS_MATCHES(veil::cross_entropy(veil::zeros<double>({}), targets_of({0}, {1})), veil::ShapeError,
                         MessageContains("logits must have a class dimension [..., C], got shape []"));
}

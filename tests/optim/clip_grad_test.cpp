// clip_grad_norm: the total L2 norm over all gradients, scaling by max_norm / (norm + 1e-6) only
// above max_norm, determinism across thread counts, and the non-finite policy.
#include "optim/support.hpp"
#include "support/message_contains.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

using veil::Tensor;
using veil::optim::clip_grad_norm;
using veil_test::MessageContains;

TEST_CASE("clip_grad_norm returns the norm over all gradients and scales them when above max_norm",
          "[optim][clip_grad]") {
  auto a = optim_test::parameter<double>({0.0, 0.0}, {2});
  auto b = optim_test::parameter<double>({0.0}, {1});
  auto no_grad = optim_test::parameter<double>({0.0}, {1});
  optim_test::set_grad(a, {3.0, 4.0});
  optim_test::set_grad(b, {12.0});
  // sqrt(9 + 16 + 144) = 13; the parameter without a gradient is skipped.
  const double norm = clip_grad_norm(std::vector<Tensor<double>>{a, b, no_grad}, 6.5);
  CHECK(norm == 13.0);
  const double coefficient = 6.5 / (13.0 + 1e-6);
  CHECK(a.grad().to_vector()[0] == Approx(3.0 * coefficient).epsilon(1e-15));
  CHECK(a.grad().to_vector()[1] == Approx(4.0 * coefficient).epsilon(1e-15));
  CHECK(b.grad().item() == Approx(12.0 * coefficient).epsilon(1e-15));
  CHECK_FALSE(no_grad.grad().defined());
  // The norm is now 6.5 · 13 / (13 + 1e-6), just below 6.5; a larger max_norm leaves the gradients
  // alone. (Clipping to 6.5 again would scale once more, by about 6.5 / (6.5 + 5e-7), as PyTorch does.)
  const auto before = a.grad().to_vector();
  CHECK(clip_grad_norm(veil::nn::NamedTensors<double>{{"a", a}, {"b", b}}, 7.0) == Approx(6.5).epsilon(1e-6));
  CHECK(a.grad().to_vector() == before);
}

TEST_CASE("clip_grad_norm leaves gradients below max_norm unchanged", "[optim][clip_grad]") {
  auto a = optim_test::parameter<float>({0.0f, 0.0f}, {2});
  optim_test::set_grad(a, {0.3f, 0.4f});
  CHECK(clip_grad_norm(std::vector<Tensor<float>>{a}, 1.0) == Approx(0.5).epsilon(1e-7));
  CHECK(a.grad().to_vector() == std::vector<float>{0.3f, 0.4f});
  CHECK(clip_grad_norm(std::vector<Tensor<float>>{}, 1.0) == 0.0);
}

TEST_CASE("clip_grad_norm gives the same bits for any thread count", "[optim][clip_grad]") {
  const veil::Index n = 300000;
  std::vector<float> values(static_cast<std::size_t>(n));
  for (veil::Index i = 0; i < n; ++i) values[i] = static_cast<float>(std::sin(0.001 * i) * (1 + i % 7));
  const auto norm_with = [&](int threads) {
    const int saved = veil::num_threads();
    veil::set_num_threads(threads);
    auto p = optim_test::parameter<float>(std::vector<float>(values.size(), 0.0f), {n});
    optim_test::set_grad(p, values);
    const double norm = clip_grad_norm(std::vector<Tensor<float>>{p}, 1.0);
    veil::set_num_threads(saved);
    return norm;
  };
  const double serial = norm_with(1);
  CHECK(norm_with(2) == serial);
  CHECK(norm_with(3) == serial);
}

TEST_CASE("clip_grad_norm with a non-finite norm returns it and leaves the gradients unchanged",
          "[optim][clip_grad][errors]") {
  auto a = optim_test::parameter<double>({0.0, 0.0}, {2});
  const double inf = std::numeric_limits<double>::infinity();
  optim_test::set_grad(a, {inf, 1.0});
  CHECK(clip_grad_norm(std::vector<Tensor<double>>{a}, 1.0) == inf);
  CHECK(a.grad().to_vector() == std::vector<double>{inf, 1.0});
  optim_test::set_grad(a, {std::nan(""), 1.0});
  CHECK(std::isnan(clip_grad_norm(std::vector<Tensor<double>>{a}, 1.0)));
  CHECK(a.grad().to_vector()[1] == 1.0);
  REQUIRE_THROWS_MATCHES(clip_grad_norm(std::vector<Tensor<double>>{a}, 1.0, {.error_if_nonfinite = true}),
                         veil::ValueError,
                         MessageContains("expected a finite norm (error_if_nonfinite = true)"));
  CHECK(a.grad().to_vector()[1] == 1.0);
}

TEST_CASE("clip_grad_norm rejects a negative max_norm", "[optim][clip_grad][errors]") {
  auto a = optim_test::parameter<double>({0.0}, {1});
  REQUIRE_THROWS_MATCHES(clip_grad_norm(std::vector<Tensor<double>>{a}, -1.0), veil::ValueError,
                         MessageContains("clip_grad_norm: max_norm must be >= 0, got -1"));
}

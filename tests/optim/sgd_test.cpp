// SGD against hand computation: plain, momentum, dampening with weight decay, Nesterov; and
// option validation (PyTorch's torch.optim.SGD rules).
#include "optim/support.hpp"
#include "support/message_contains.hpp"

#include <catch2/catch.hpp>

#include <vector>

using veil::optim::SGD;
using veil::optim::SGDOptions;
using veil_test::MessageContains;

namespace {

/// Runs SGD on one scalar parameter starting at 1 with the given gradients; returns p after each step.
std::vector<double> run(const SGDOptions& options, const std::vector<double>& grads) {
  auto p = optim_test::parameter<double>({1.0}, {1});
  SGD<double> optimizer(veil::nn::NamedTensors<double>{{"p", p}}, options);
  std::vector<double> out;
  for (double g : grads) {
    optim_test::set_grad(p, {g});
    optimizer.step();
    out.push_back(p.item());
  }
  return out;
}

}  // namespace

TEST_CASE("SGD without momentum subtracts lr times the gradient", "[optim][sgd]") {
  const auto p = run(SGDOptions{.lr = 0.1}, {1.0, 2.0});
  CHECK(p[0] == Approx(0.9).margin(1e-15));
  CHECK(p[1] == Approx(0.7).margin(1e-15));
}

TEST_CASE("SGD momentum matches hand computation", "[optim][sgd]") {
  // b1 = g1 = 1                      p = 1 − 0.1·1     = 0.9
  // b2 = 0.9·1 + 2 = 2.9             p = 0.9 − 0.29    = 0.61
  // b3 = 0.9·2.9 − 1 = 1.61          p = 0.61 − 0.161  = 0.449
  const auto p = run(SGDOptions{.lr = 0.1, .momentum = 0.9}, {1.0, 2.0, -1.0});
  CHECK(p[0] == Approx(0.9).margin(1e-14));
  CHECK(p[1] == Approx(0.61).margin(1e-14));
  CHECK(p[2] == Approx(0.449).margin(1e-14));
}

TEST_CASE("SGD Nesterov momentum matches hand computation", "[optim][sgd]") {
  // Buffers as above; the step uses d = g + momentum·b:
  // d1 = 1 + 0.9·1 = 1.9             p = 1 − 0.19      = 0.81
  // d2 = 2 + 0.9·2.9 = 4.61          p = 0.81 − 0.461  = 0.349
  // d3 = −1 + 0.9·1.61 = 0.449       p = 0.349 − 0.0449 = 0.3041
  const auto p = run(SGDOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true}, {1.0, 2.0, -1.0});
  CHECK(p[0] == Approx(0.81).margin(1e-14));
  CHECK(p[1] == Approx(0.349).margin(1e-14));
  CHECK(p[2] == Approx(0.3041).margin(1e-14));
}

TEST_CASE("SGD dampening spares the first step and weight decay adds to the gradient", "[optim][sgd]") {
  // d1 = 1 + 0.1·1 = 1.1, b1 = d1 (no dampening at the first step)   p = 1 − 0.11 = 0.89
  // d2 = 2 + 0.1·0.89 = 2.089, b2 = 0.9·1.1 + 0.5·2.089 = 2.0345    p = 0.89 − 0.20345 = 0.68655
  const auto p = run(SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .weight_decay = 0.1}, {1.0, 2.0});
  CHECK(p[0] == Approx(0.89).margin(1e-14));
  CHECK(p[1] == Approx(0.68655).margin(1e-14));
}

TEST_CASE("SGD keeps a momentum buffer only when momentum is nonzero", "[optim][sgd][state_dict]") {
  auto p = optim_test::parameter<double>({1.0, 2.0}, {2});
  SGD<double> plain(veil::nn::NamedTensors<double>{{"p", p}}, SGDOptions{.lr = 0.1});
  optim_test::set_grad(p, {1.0, 1.0});
  plain.step();
  CHECK(plain.state_dict().size() == 1);  // param_groups.0.lr only
  SGD<double> with_momentum(veil::nn::NamedTensors<double>{{"p", p}}, SGDOptions{.lr = 0.1, .momentum = 0.5});
  with_momentum.step();
  const auto state = with_momentum.state_dict();
  REQUIRE(state.count("state.p.momentum_buffer") == 1);
  CHECK(state.at("state.p.momentum_buffer").to_vector() == std::vector<double>{1.0, 1.0});
  CHECK(state.count("state.p.step") == 0);
}

TEST_CASE("SGD rejects out-of-range options naming the option and the value", "[optim][sgd][errors]") {
  auto p = optim_test::parameter<float>({1.0f}, {1});
  const veil::nn::NamedTensors<float> params = {{"p", p}};
  REQUIRE_THROWS_MATCHES(SGD<float>(params, SGDOptions{.lr = -0.1}), veil::ValueError,
                         MessageContains("SGD: lr must be finite and >= 0, got -0.1"));
  REQUIRE_THROWS_MATCHES(SGD<float>(params, SGDOptions{.momentum = -0.9}), veil::ValueError,
                         MessageContains("SGD: momentum must be finite and >= 0, got -0.9"));
  REQUIRE_THROWS_MATCHES(SGD<float>(params, SGDOptions{.weight_decay = -1.0}), veil::ValueError,
                         MessageContains("SGD: weight_decay must be finite and >= 0, got -1"));
  REQUIRE_THROWS_MATCHES(SGD<float>(params, SGDOptions{.nesterov = true}), veil::ValueError,
                         MessageContains("SGD: nesterov requires momentum > 0 and dampening == 0, got momentum = 0"));
  REQUIRE_THROWS_MATCHES(SGD<float>(params, SGDOptions{.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                         veil::ValueError, MessageContains("got momentum = 0.9, dampening = 0.1"));
}

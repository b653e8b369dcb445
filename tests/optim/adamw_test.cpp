// AdamW against an independent double-precision reference written from the paper's formulas,
// bit-identical resume through the state dict, and option validation.
#include "optim/support.hpp"
#include "support/message_contains.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#if __has_include(<veil/io/safetensors.hpp>)
#include <veil/io/safetensors.hpp>
#define VEIL_OPTIM_TEST_HAS_SAFETENSORS 1
#endif

using veil::Tensor;
using veil::optim::AdamW;
using veil::optim::AdamWOptions;
using veil_test::MessageContains;

namespace {

/// The synthetic gradient of element i of parameter k at step t (1-based): smooth, of both signs.
double synthetic_grad(int t, int k, int i) { return std::sin(0.37 * t + 1.1 * k + 0.53 * i) * (k + 1); }
double initial_value(int k, int i) { return std::cos(0.9 * k + 0.41 * i); }

struct ReferenceParameter {
  std::vector<double> p, m, v;
  double weight_decay;
};

/// Loshchilov & Hutter, Algorithm 2 with Adam's bias correction (Kingma & Ba, Algorithm 1),
/// in plain double loops: decay, moments, corrected moments, update.
std::vector<ReferenceParameter> reference_adamw(const std::vector<int>& sizes, const std::vector<double>& decays,
                                                double lr, double beta1, double beta2, double eps, int steps) {
  std::vector<ReferenceParameter> params;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    ReferenceParameter param{{}, std::vector<double>(sizes[k], 0.0), std::vector<double>(sizes[k], 0.0), decays[k]};
    for (int i = 0; i < sizes[k]; ++i) param.p.push_back(initial_value(static_cast<int>(k), i));
    params.push_back(param);
  }
  for (int t = 1; t <= steps; ++t) {
    for (std::size_t k = 0; k < params.size(); ++k) {
      auto& param = params[k];
      for (int i = 0; i < sizes[k]; ++i) {
        const double g = synthetic_grad(t, static_cast<int>(k), i);
        param.p[i] = param.p[i] - lr * param.weight_decay * param.p[i];
        param.m[i] = beta1 * param.m[i] + (1 - beta1) * g;
        param.v[i] = beta2 * param.v[i] + (1 - beta2) * g * g;
        const double m_hat = param.m[i] / (1 - std::pow(beta1, t));
        const double v_hat = param.v[i] / (1 - std::pow(beta2, t));
        param.p[i] = param.p[i] - lr * m_hat / (std::sqrt(v_hat) + eps);
      }
    }
  }
  return params;
}

template <class T>
void check_against_reference(double tolerance) {
  // Parameters 0 and 1 (a matrix and a vector) decay; parameter 2 (a "bias") does not.
  const std::vector<int> sizes = {6, 3, 4};
  const std::vector<veil::Shape> shapes = {{2, 3}, {3}, {4}};
  const std::vector<std::string> names = {"weight", "scale", "bias"};
  const double lr = 0.01, beta1 = 0.9, beta2 = 0.99, eps = 1e-8, weight_decay = 0.1;
  std::vector<Tensor<T>> params;
  for (int k = 0; k < 3; ++k) {
    std::vector<T> values;
    for (int i = 0; i < sizes[k]; ++i) values.push_back(static_cast<T>(initial_value(k, i)));
    params.push_back(optim_test::parameter<T>(values, shapes[k]));
  }
  const AdamWOptions options{.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = weight_decay};
  AdamW<T> optimizer({{{{names[0], params[0]}, {names[1], params[1]}}, options},
                      {{{names[2], params[2]}}, options.with_weight_decay(0.0)}});
  for (int t = 1; t <= 10; ++t) {
    for (int k = 0; k < 3; ++k) {
      std::vector<T> grad;
      for (int i = 0; i < sizes[k]; ++i) grad.push_back(static_cast<T>(synthetic_grad(t, k, i)));
      optim_test::set_grad(params[k], grad);
    }
    optimizer.step();
  }
  const auto expected = reference_adamw(sizes, {weight_decay, weight_decay, 0.0}, lr, beta1, beta2, eps, 10);
  const auto state = optimizer.state_dict();
  for (int k = 0; k < 3; ++k) {
    const auto got = params[k].to_vector();
    const auto m = state.at("state." + names[k] + ".exp_avg").to_vector();
    const auto v = state.at("state." + names[k] + ".exp_avg_sq").to_vector();
    for (int i = 0; i < sizes[k]; ++i) {
      INFO("parameter " << names[k] << " element " << i);
      CHECK(static_cast<double>(got[i]) == Approx(expected[k].p[i]).epsilon(0).margin(tolerance));
      CHECK(static_cast<double>(m[i]) == Approx(expected[k].m[i]).epsilon(0).margin(tolerance));
      CHECK(static_cast<double>(v[i]) == Approx(expected[k].v[i]).epsilon(0).margin(tolerance));
    }
    CHECK(state.at("state." + names[k] + ".step").item() == T(10));
  }
}

}  // namespace

TEST_CASE("AdamW matches a hand-written double reference over 10 steps with weight decay on some groups only",
          "[optim][adamw]") {
  // Same formulas, different operation order (the reference divides m and v by their bias
  // corrections; AdamW folds them into the step size): agreement to rounding.
  check_against_reference<double>(1e-13);
}

TEST_CASE("AdamW in float matches the double reference to float rounding", "[optim][adamw]") {
  check_against_reference<float>(2e-6);
}

TEST_CASE("AdamW decays weights even when the gradient is zero and only then", "[optim][adamw]") {
  auto decayed = optim_test::parameter<double>({2.0, -4.0}, {2});
  auto kept = optim_test::parameter<double>({2.0, -4.0}, {2});
  AdamW<double> optimizer({{{{"decayed", decayed}}, AdamWOptions{.lr = 0.1, .weight_decay = 0.5}},
                           {{{"kept", kept}}, AdamWOptions{.lr = 0.1, .weight_decay = 0.0}}});
  optim_test::set_grad(decayed, {0.0, 0.0});
  optim_test::set_grad(kept, {0.0, 0.0});
  optimizer.step();
  // Decoupled decay: p · (1 − lr · wd) = p · 0.95; the Adam step is m / (sqrt(v) + eps) = 0.
  CHECK(decayed.to_vector() == std::vector<double>{1.9, -3.8});
  CHECK(kept.to_vector() == std::vector<double>{2.0, -4.0});
}

TEST_CASE("AdamW saved and loaded after 10 steps then run 10 more is bit-identical to 20 uninterrupted steps",
          "[optim][adamw][state_dict]") {
  const auto grad_at = [](int t, int k, veil::Index n) {
    std::vector<float> out;
    for (veil::Index i = 0; i < n; ++i) out.push_back(static_cast<float>(synthetic_grad(t, k, static_cast<int>(i))));
    return out;
  };
  const std::vector<veil::Shape> shapes = {{4, 5}, {5}, {5}};
  const std::vector<std::string> names = {"linear.weight", "linear.bias", "norm.weight"};
  const auto make_params = [&] {
    veil::nn::NamedTensors<float> out;
    for (int k = 0; k < 3; ++k) {
      std::vector<float> values;
      for (veil::Index i = 0; i < veil::numel_of(shapes[k]); ++i)
        values.push_back(static_cast<float>(initial_value(k, static_cast<int>(i))));
      out.emplace_back(names[k], optim_test::parameter<float>(values, shapes[k]));
    }
    return out;
  };
  // lr 3e-3 is not exact in float: the resumed optimizer must keep the double it was built with.
  const AdamWOptions options{.lr = 3e-3, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1};
  const veil::optim::WarmupCosineOptions schedule{.lr = 3e-3, .min_lr = 3e-4, .warmup_iters = 4, .lr_decay_iters = 18};
  const auto run_step = [&](AdamW<float>& optimizer, const veil::nn::NamedTensors<float>& params, int t) {
    if (t > 12) optimizer.set_lr(veil::optim::warmup_cosine_lr(t, schedule));  // a schedule takes over late
    for (int k = 0; k < 3; ++k) optim_test::set_grad(params[k].second, grad_at(t, k, params[k].second.numel()));
    optimizer.step();
  };

  const auto straight_params = make_params();
  AdamW<float> straight(veil::optim::weight_decay_groups(straight_params, options));
  std::vector<std::vector<Tensor<float>>> straight_history;
  for (int t = 1; t <= 20; ++t) {
    run_step(straight, straight_params, t);
    std::vector<Tensor<float>> snapshot;
    for (auto& [name, param] : straight_params) snapshot.push_back(veil::detail::copy_contiguous(param));
    straight_history.push_back(snapshot);
  }

  const auto first_params = make_params();
  AdamW<float> first(veil::optim::weight_decay_groups(first_params, options));
  for (int t = 1; t <= 10; ++t) run_step(first, first_params, t);

  const auto resume_and_compare = [&](const veil::nn::StateDict<float>& optimizer_state,
                                      const veil::nn::StateDict<float>& parameter_values) {
    auto resumed_params = make_params();  // fresh tensors, then the saved values copied in
    for (auto& [name, param] : resumed_params)
      std::copy_n(parameter_values.at(name).to_vector().data(), param.numel(), param.data());
    AdamW<float> resumed(veil::optim::weight_decay_groups(resumed_params, options));
    resumed.load_state_dict(optimizer_state);
    for (int t = 11; t <= 20; ++t) {
      run_step(resumed, resumed_params, t);
      for (int k = 0; k < 3; ++k) {
        INFO("step " << t << ", parameter " << names[k]);
        REQUIRE(optim_test::bitwise_equal(resumed_params[k].second, straight_history[t - 1][k]));
      }
    }
    const auto final_state = resumed.state_dict();
    const auto straight_state = straight.state_dict();
    REQUIRE(final_state.size() == straight_state.size());
    for (const auto& [key, tensor] : straight_state) {
      INFO(key);
      REQUIRE(optim_test::bitwise_equal(final_state.at(key), tensor));
    }
  };

  veil::nn::StateDict<float> parameter_values;
  for (auto& [name, param] : first_params) parameter_values.emplace(name, param.detach());
  SECTION("through an in-memory copy of the state dict") {
    resume_and_compare(optim_test::deep_copy(first.state_dict()), optim_test::deep_copy(parameter_values));
  }
#ifdef VEIL_OPTIM_TEST_HAS_SAFETENSORS
  SECTION("through a safetensors file") {
    const auto path = std::filesystem::temp_directory_path() / "veil_optim_adamw_resume_test.safetensors";
    veil::io::save_safetensors(path, first.state_dict());
    const auto loaded = veil::io::load_safetensors(path).to_state_dict<float>();
    std::filesystem::remove(path);
    resume_and_compare(loaded, optim_test::deep_copy(parameter_values));
  }
#endif
}

TEST_CASE("AdamW rejects out-of-range options naming the option and the value", "[optim][adamw][errors]") {
  auto w = optim_test::parameter<float>({1.0f}, {1});
  const veil::nn::NamedTensors<float> params = {{"w", w}};
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.lr = -1e-3}), veil::ValueError,
                         MessageContains("AdamW: lr must be finite and >= 0, got -0.001"));
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.beta1 = 1.0}), veil::ValueError,
                         MessageContains("AdamW: beta1 must be in [0, 1), got 1"));
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.beta2 = -0.5}), veil::ValueError,
                         MessageContains("AdamW: beta2 must be in [0, 1), got -0.5"));
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.eps = -1.0}), veil::ValueError,
                         MessageContains("AdamW: eps must be finite and >= 0, got -1"));
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.weight_decay = -0.1}), veil::ValueError,
                         MessageContains("AdamW: weight_decay must be finite and >= 0, got -0.1"));
  REQUIRE_THROWS_MATCHES(AdamW<float>(params, AdamWOptions{.lr = std::nan("")}), veil::ValueError,
                         MessageContains("AdamW: lr must be finite and >= 0"));
  AdamW<float> optimizer(params);
  REQUIRE_THROWS_MATCHES(optimizer.set_lr(-2.0), veil::ValueError,
                         MessageContains("AdamW: set_lr: lr must be finite and >= 0, got -2"));
  CHECK(optimizer.lr() == 1e-3);
}

// The Optimizer base through SGD and AdamW: parameter groups, skipped parameters, all-or-nothing
// steps, learning-rate access, and state dicts (layout, snapshot semantics, validated loading).
#include "optim/support.hpp"
#include "support/message_contains.hpp"

#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

using veil::Tensor;
using veil::optim::AdamW;
using veil::optim::AdamWOptions;
using veil::optim::SGD;
using veil::optim::SGDOptions;
using veil_test::MessageContains;

namespace {

struct Model {
  Tensor<double> weight = optim_test::parameter<double>({0.5, -1.0, 1.5, 2.0, -0.25, 0.75}, {2, 3});
  Tensor<double> bias = optim_test::parameter<double>({0.1, -0.2, 0.3}, {3});
  veil::nn::NamedTensors<double> named() const { return {{"weight", weight}, {"bias", bias}}; }
  void set_grads(double scale) {
    optim_test::set_grad(weight, {scale, -scale, 2 * scale, 0.5, -0.5, scale});
    optim_test::set_grad(bias, {-scale, 0.25, scale});
  }
};

std::set<std::string> keys_of(const veil::nn::StateDict<double>& dict) {
  std::set<std::string> out;
  for (const auto& [key, tensor] : dict) out.insert(key);
  return out;
}

bool same_state(const veil::nn::StateDict<double>& a, const veil::nn::StateDict<double>& b) {
  if (keys_of(a) != keys_of(b)) return false;
  for (const auto& [key, tensor] : a)
    if (!optim_test::bitwise_equal(tensor, b.at(key))) return false;
  return true;
}

}  // namespace

TEST_CASE("AdamW state dict holds each group lr and each stepped parameter's moments and step", "[optim][state_dict]") {
  Model model;
  AdamW<double> optimizer(veil::optim::weight_decay_groups(model.named(), AdamWOptions{.lr = 0.01}));
  CHECK(keys_of(optimizer.state_dict()) == std::set<std::string>{"param_groups.0.lr", "param_groups.1.lr"});
  model.set_grads(1.0);
  optimizer.step();
  const auto state = optimizer.state_dict();
  CHECK(keys_of(state) == std::set<std::string>{"param_groups.0.lr", "param_groups.1.lr", "state.weight.exp_avg",
                                                "state.weight.exp_avg_sq", "state.weight.step", "state.bias.exp_avg",
                                                "state.bias.exp_avg_sq", "state.bias.step"});
  CHECK(state.at("state.weight.step").shape().empty());
  CHECK(state.at("state.weight.step").item() == 1.0);
  CHECK(state.at("state.bias.exp_avg").shape() == veil::Shape{3});
  CHECK(state.at("param_groups.1.lr").item() == 0.01);
}

TEST_CASE("The state dict is a snapshot that later steps do not change", "[optim][state_dict]") {
  Model model;
  SGD<double> optimizer(model.named(), SGDOptions{.lr = 0.1, .momentum = 0.9});
  model.set_grads(1.0);
  optimizer.step();
  const auto saved = optimizer.state_dict();
  const auto copy = optim_test::deep_copy(saved);
  optimizer.step();
  CHECK(same_state(saved, copy));
  CHECK_FALSE(same_state(saved, optimizer.state_dict()));
}

TEST_CASE("Weight decay groups put tensors of rank 2 or more first and the rest with weight_decay 0", "[optim]") {
  Model model;
  const auto groups = veil::optim::weight_decay_groups(model.named(), AdamWOptions{.weight_decay = 0.1});
  REQUIRE(groups.size() == 2);
  REQUIRE(groups[0].parameters.size() == 1);
  CHECK(groups[0].parameters[0].first == "weight");
  CHECK(groups[0].options.weight_decay == 0.1);
  REQUIRE(groups[1].parameters.size() == 1);
  CHECK(groups[1].parameters[0].first == "bias");
  CHECK(groups[1].options.weight_decay == 0.0);
}

TEST_CASE("Parameters whose gradient is undefined are skipped and get no state", "[optim]") {
  Model model;
  AdamW<double> optimizer(model.named());
  optim_test::set_grad(model.weight, {1, 1, 1, 1, 1, 1});
  const auto bias_before = model.bias.to_vector();
  optimizer.step();
  CHECK(model.bias.to_vector() == bias_before);
  const auto keys = keys_of(optimizer.state_dict());
  CHECK(keys.count("state.weight.step") == 1);
  CHECK(keys.count("state.bias.step") == 0);
}

TEST_CASE("Parameters are updated in place so the handles a model keeps stay valid", "[optim]") {
  Model model;
  const Tensor<double> handle = model.weight;
  const double* storage = model.weight.data();
  SGD<double> optimizer(model.named(), SGDOptions{.lr = 0.5});
  model.set_grads(1.0);
  optimizer.step();
  CHECK(model.weight.data() == storage);
  CHECK(handle.at({0, 0}) == 0.5 - 0.5 * 1.0);
  CHECK(handle.requires_grad());
  CHECK(handle.grad_fn() == nullptr);
}

TEST_CASE("A gradient of the wrong shape fails the step before any parameter or state changes", "[optim][errors]") {
  Model model;
  AdamW<double> optimizer(model.named());
  model.set_grads(1.0);
  optimizer.step();
  const auto state_before = optimizer.state_dict();
  const auto weight_before = model.weight.to_vector();
  model.set_grads(2.0);
  // Only a corrupted tensor can carry such a gradient: install one through the internals.
  model.bias.impl().grad = veil::zeros<double>({4}).impl_ptr();
  REQUIRE_THROWS_MATCHES(optimizer.step(), veil::ShapeError,
                         MessageContains("AdamW: step: the gradient of 'bias' has shape [4], expected the parameter's shape [3]"));
  CHECK(model.weight.to_vector() == weight_before);  // weight comes first and still did not move
  CHECK(same_state(optimizer.state_dict(), state_before));
}

TEST_CASE("A tied weight listed twice in one group is updated once under its first name", "[optim]") {
  Model model;
  SGD<double> optimizer(veil::nn::NamedTensors<double>{{"embedding.weight", model.weight},
                                                       {"head.weight", model.weight.detach()},
                                                       {"bias", model.bias}},
                        SGDOptions{.lr = 0.5, .momentum = 0.9});
  REQUIRE(optimizer.parameters().size() == 2);
  CHECK(optimizer.parameters()[0].first == "embedding.weight");
  model.set_grads(1.0);
  optimizer.step();
  CHECK(model.weight.at({0, 0}) == 0.5 - 0.5 * 1.0);  // once, not twice
  CHECK(optimizer.state_dict().count("state.embedding.weight.momentum_buffer") == 1);
  CHECK(optimizer.state_dict().count("state.head.weight.momentum_buffer") == 0);
}

TEST_CASE("zero_grad drops every gradient", "[optim]") {
  Model model;
  SGD<double> optimizer(model.named());
  model.set_grads(1.0);
  optimizer.zero_grad();
  CHECK_FALSE(model.weight.grad().defined());
  CHECK_FALSE(model.bias.grad().defined());
}

TEST_CASE("set_lr changes every group or one group", "[optim]") {
  Model model;
  SGD<double> optimizer({{{{"weight", model.weight}}, SGDOptions{.lr = 0.1}}, {{{"bias", model.bias}}, SGDOptions{.lr = 0.2}}});
  REQUIRE(optimizer.num_param_groups() == 2);
  CHECK(optimizer.lr(0) == 0.1);
  CHECK(optimizer.lr(1) == 0.2);
  optimizer.set_lr(1, 0.05);
  CHECK(optimizer.lr(0) == 0.1);
  CHECK(optimizer.lr(1) == 0.05);
  veil::optim::Optimizer<double>& generic = optimizer;
  generic.set_lr(0.3);
  CHECK(optimizer.lr(0) == 0.3);
  CHECK(optimizer.lr(1) == 0.3);
  REQUIRE_THROWS_MATCHES(optimizer.set_lr(2, 0.1), veil::ValueError,
                         MessageContains("SGD: set_lr: group must be in [0, 2), got 2"));
}

TEST_CASE("Parameters must be unique leaves with unique names", "[optim][errors]") {
  Model model;
  REQUIRE_THROWS_MATCHES(SGD<double>(veil::nn::NamedTensors<double>{{"w", model.weight}, {"w", model.bias}}),
                         veil::ValueError, MessageContains("SGD: parameter name 'w' appears twice"));
  REQUIRE_THROWS_MATCHES(SGD<double>({{{{"a", model.weight}}, SGDOptions{}}, {{{"b", model.weight}}, SGDOptions{}}}),
                         veil::ValueError,
                         MessageContains("SGD: parameter 'b' is the same tensor as 'a' of an earlier group"));
  const Tensor<double> computed = model.weight * model.weight;
  REQUIRE_THROWS_MATCHES(SGD<double>(veil::nn::NamedTensors<double>{{"c", computed}}), veil::ValueError,
                         MessageContains("SGD: parameter 'c' must be a leaf tensor"));
  REQUIRE_THROWS_MATCHES(SGD<double>(veil::nn::NamedTensors<double>{{"t", model.weight.detach().transpose(0, 1)}}),
                         veil::ValueError, MessageContains("SGD: parameter 't' must be contiguous"));
}

TEST_CASE("load_state_dict with missing or mismatched entries throws IoError and leaves the optimizer unchanged",
          "[optim][state_dict][errors]") {
  Model model;
  AdamW<double> optimizer(veil::optim::weight_decay_groups(model.named(), AdamWOptions{.lr = 0.01}));
  model.set_grads(1.0);
  optimizer.step();
  model.set_grads(-0.5);
  optimizer.step();
  const auto good = optim_test::deep_copy(optimizer.state_dict());
  auto broken = good;

  SECTION("a missing group lr and a missing moment") {
    broken.erase("param_groups.1.lr");
    broken.erase("state.weight.exp_avg_sq");
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("missing keys: param_groups.1.lr, state.weight.exp_avg_sq"));
  }
  SECTION("an unknown parameter and an unknown group") {
    broken.emplace("state.decoder.weight.exp_avg", veil::zeros<double>({2, 3}));
    broken.emplace("param_groups.2.lr", veil::scalar<double>(0.1));
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("unexpected keys: param_groups.2.lr, state.decoder.weight.exp_avg"));
  }
  SECTION("a moment of the wrong shape") {
    broken["state.bias.exp_avg"] = veil::zeros<double>({4});
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("size mismatch for state.bias.exp_avg: checkpoint [4] vs optimizer [3]"));
  }
  SECTION("a step count that is not a positive integer") {
    broken["state.bias.step"] = veil::scalar<double>(2.5);
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("bad value for state.bias.step: expected an integer step count >= 1, got 2.5"));
  }
  SECTION("a negative lr and an lr that is not 0-d") {
    broken["param_groups.0.lr"] = veil::scalar<double>(-1.0);
    broken["param_groups.1.lr"] = veil::zeros<double>({1});
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("bad value for param_groups.0.lr: expected a finite lr >= 0, got -1"));
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict(broken), veil::IoError,
                           MessageContains("size mismatch for param_groups.1.lr: checkpoint [1] vs optimizer [] (0-d)"));
  }
  SECTION("an empty dict") {
    REQUIRE_THROWS_MATCHES(optimizer.load_state_dict({}), veil::IoError,
                           MessageContains("nothing was loaded.\n  missing keys: param_groups.0.lr, param_groups.1.lr"));
  }
  CHECK(same_state(optimizer.state_dict(), good));
  CHECK(optimizer.lr(0) == 0.01);
}

TEST_CASE("load_state_dict replaces the state and the group lrs", "[optim][state_dict]") {
  Model model;
  SGD<double> trained(model.named(), SGDOptions{.lr = 0.1, .momentum = 0.9});
  model.set_grads(1.0);
  trained.step();
  trained.set_lr(0.025);
  const auto saved = optim_test::deep_copy(trained.state_dict());

  Model other;
  SGD<double> fresh(other.named(), SGDOptions{.lr = 0.1, .momentum = 0.9});
  fresh.load_state_dict(saved);
  CHECK(fresh.lr() == 0.025);
  CHECK(same_state(fresh.state_dict(), saved));

  // A dict without a parameter's state clears that state: the next step starts its buffer anew.
  auto without_bias = saved;
  without_bias.erase("state.bias.momentum_buffer");
  fresh.load_state_dict(without_bias);
  CHECK(keys_of(fresh.state_dict()).count("state.bias.momentum_buffer") == 0);
}

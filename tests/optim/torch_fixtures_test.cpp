// veil's optimizers against PyTorch: every case in tests/fixtures/optim_fixtures.json (written by
// make_optim_fixtures.py: torch.optim.AdamW / SGD, 10 steps on small parameters, some with
// skipped gradients or a per-step learning rate) is replayed in double and in float, and the
// parameters and optimizer state after the last step are compared with torch's.
#include "optim/support.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

using veil::Tensor;
using json = nlohmann::ordered_json;

namespace {

const json& fixtures() {
  static const json loaded = [] {
    const std::string path = VEIL_FIXTURE_DIR "/optim_fixtures.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path + "; regenerate it with make_optim_fixtures.py");
    return json::parse(in);
  }();
  return loaded;
}

template <class T>
Tensor<T> tensor_from(const json& encoded) {
  Tensor<T> out = Tensor<T>::empty(encoded.at("shape").get<veil::Shape>());
  const auto& data = encoded.at("data");
  REQUIRE(static_cast<veil::Index>(data.size()) == out.numel());
  for (std::size_t i = 0; i < data.size(); ++i) out.data()[i] = static_cast<T>(data[i].get<double>());
  return out;
}

template <class T>
std::unique_ptr<veil::optim::Optimizer<T>> make_optimizer(const json& fixture,
                                                          const std::map<std::string, Tensor<T>>& params) {
  const auto named = [&](const json& group) {
    veil::nn::NamedTensors<T> out;
    for (const auto& name : group.at("parameters")) out.emplace_back(name.get<std::string>(), params.at(name));
    return out;
  };
  if (fixture.at("optimizer") == "AdamW") {
    std::vector<veil::optim::ParamGroup<T, veil::optim::AdamWOptions>> groups;
    for (const auto& group : fixture.at("groups")) {
      const json& o = group.at("options");
      groups.push_back({named(group), {.lr = o.at("lr"), .beta1 = o.at("beta1"), .beta2 = o.at("beta2"),
                                       .eps = o.at("eps"), .weight_decay = o.at("weight_decay")}});
    }
    return std::make_unique<veil::optim::AdamW<T>>(groups);
  }
  std::vector<veil::optim::ParamGroup<T, veil::optim::SGDOptions>> groups;
  for (const auto& group : fixture.at("groups")) {
    const json& o = group.at("options");
    groups.push_back({named(group), {.lr = o.at("lr"), .momentum = o.at("momentum"), .dampening = o.at("dampening"),
                                     .weight_decay = o.at("weight_decay"), .nesterov = o.at("nesterov")}});
  }
  return std::make_unique<veil::optim::SGD<T>>(groups);
}

/// Largest |got − expected| / max(1, |expected|) over the elements.
template <class T>
double scaled_error(const Tensor<T>& got, const json& expected) {
  const Tensor<double> want = tensor_from<double>(expected);
  REQUIRE(got.shape() == want.shape());
  const auto a = got.to_vector();
  const auto b = want.to_vector();
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]) / std::max(1.0, std::abs(b[i])));
  return worst;
}

template <class T>
void replay(const json& fixture, double tolerance) {
  std::map<std::string, Tensor<T>> params;
  for (const auto& [name, encoded] : fixture.at("initial").items()) {
    Tensor<T> p = tensor_from<T>(encoded);
    p.set_requires_grad(true);
    params.emplace(name, p);
  }
  auto optimizer = make_optimizer<T>(fixture, params);
  const json& lrs = fixture.at("lrs");
  const json& steps = fixture.at("grads");
  for (std::size_t step = 0; step < steps.size(); ++step) {
    if (!lrs.is_null())
      for (std::size_t g = 0; g < lrs[step].size(); ++g)
        optimizer->set_lr(static_cast<veil::Index>(g), lrs[step][g].get<double>());
    optimizer->zero_grad();
    for (const auto& [name, encoded] : steps[step].items()) {
      const Tensor<T> grad = tensor_from<T>(encoded);
      params.at(name).backward(grad);
    }
    optimizer->step();
  }
  for (const auto& [name, encoded] : fixture.at("final").items()) {
    INFO("parameter " << name);
    CHECK(scaled_error(params.at(name), encoded) <= tolerance);
  }
  const auto state = optimizer->state_dict();
  for (const auto& [name, fields] : fixture.at("state").items()) {
    for (const auto& [field, value] : fields.items()) {
      const std::string key = "state." + name + "." + field;
      INFO(key);
      REQUIRE(state.count(key) == 1);
      if (field == "step")
        CHECK(static_cast<double>(state.at(key).item()) == value.template get<double>());
      else
        CHECK(scaled_error(state.at(key), value) <= tolerance);
    }
  }
}

}  // namespace

TEST_CASE("Optimizers match torch.optim in double", "[optim][torch]") {
  const json& cases = fixtures().at("cases");
  REQUIRE(cases.size() >= 7);
  for (const auto& fixture : cases) {
    SECTION(fixture.at("optimizer").get<std::string>() + " " + fixture.at("name").get<std::string>()) {
      replay<double>(fixture, 1e-12);
    }
  }
}

TEST_CASE("Optimizers match torch.optim in float to float rounding", "[optim][torch]") {
  // Inputs rounded to float, 10 steps of O(lr) updates: errors of a few float ulps of O(1) values.
  for (const auto& fixture : fixtures().at("cases")) {
    SECTION(fixture.at("optimizer").get<std::string>() + " " + fixture.at("name").get<std::string>()) {
      replay<float>(fixture, 2e-6);
    }
  }
}

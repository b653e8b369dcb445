// nn::MultiHeadAttention against torch.nn.MultiheadAttention(batch_first=True): every case of
// tests/fixtures/mha_fixtures.json (written by make_mha_fixtures.py) loads torch's state_dict into
// a veil module (the names and shapes must match one to one), translates torch's masks into
// veil::mask values, and compares the output, the attention weights and the gradient of every
// input and parameter.
//
// Tolerances, on max |got - expected| / (1 + |expected|):
//   double, float64 fixtures: 1e-10. Both sides compute the same ~10 ops in float64 (rounding
//     ~1e-16 each, sums of at most 16 terms of O(1)); 1e-10 leaves room for the different
//     summation orders (online softmax vs softmax) without hiding a wrong term, which shows at
//     O(1e-2) or more.
//   float: 2e-4. float32 rounding is ~6e-8 per op; softmax, the exp of scores of O(3) and chains of
//     three GEMMs with K <= 16 amplify it to ~1e-5 on either side (the float32 fixtures carry
//     torch's own float32 error too); 2e-4 keeps a 10x margin and still catches any real mistake.
#include <veil/autograd.hpp>
#include <veil/nn.hpp>

#include <catch2/catch.hpp>

#include "support/fixtures.hpp"
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
using json = nlohmann::ordered_json;
namespace nn = veil::nn;
namespace mask = veil::mask;

namespace {

const json& fixtures() {
  static const json loaded = veil_test::load_fixture("mha_fixtures");
  return loaded;
}

/// A number, or "inf" / "-inf" / "nan" as the script writes what JSON cannot hold.
double number_from(const json& value) {
  return value.is_string() ? std::stod(value.get<std::string>()) : value.get<double>();
}

template <class T>
Tensor<T> tensor_from(const json& encoded) {
  Tensor<T> out = Tensor<T>::empty(encoded.at("shape").get<veil::Shape>());
  const auto& data = encoded.at("data");
  REQUIRE(static_cast<Index>(data.size()) == out.numel());
  for (std::size_t i = 0; i < data.size(); ++i) out.data()[i] = static_cast<T>(number_from(data[i]));
  return out;
}

/// A torch attn_mask ([Lq, Lk] or [B*H, Lq, Lk]) or key_padding_mask ([B, Lk]) as a tensor
/// broadcastable to veil's [B, H, Lq, Lk].
veil::Shape veil_mask_shape(const std::string& kind, const veil::Shape& torch_shape, Index heads) {
  if (kind == "key_padding_mask") return {torch_shape[0], 1, 1, torch_shape[1]};
  if (torch_shape.size() == 3) return {torch_shape[0] / heads, heads, torch_shape[1], torch_shape[2]};
  return torch_shape;
}

template <class T>
mask::Mask veil_mask(const json& fixture) {
  const Index heads = fixture.at("options").at("num_heads").get<Index>();
  mask::Mask combined = mask::none();
  for (const auto& entry : fixture.at("masks")) {
    const std::string kind = entry.at("kind");
    if (kind == "causal") {
      combined = combined & mask::causal();
      continue;
    }
    const json& encoded = entry.at("tensor");
    const veil::Shape shape = veil_mask_shape(kind, encoded.at("shape").get<veil::Shape>(), heads);
    if (kind == "attn_mask_float") {
      Tensor<T> bias = tensor_from<T>(encoded);
      combined = combined & mask::additive(Tensor<T>::view_of(bias, shape, veil::contiguous_strides(shape), 0));
    } else {  // torch's bool masks: true = not allowed, which is mask::forbid
      Tensor<bool> forbidden = Tensor<bool>::empty(shape);
      const auto& data = encoded.at("data");
      for (std::size_t i = 0; i < data.size(); ++i) forbidden.data()[i] = data[i].get<int>() != 0;
      combined = combined & mask::forbid(forbidden);
    }
  }
  return combined;
}

template <class T>
double scaled_error(const Tensor<T>& got, const json& expected, const std::string& what) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(got.shape() == expected.at("shape").get<veil::Shape>());
  const std::vector<T> values = got.to_vector();
  const auto& data = expected.at("data");
  double worst = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double e = number_from(data[i]);
    worst = std::max(worst, std::abs(static_cast<double>(values[i]) - e) / (1.0 + std::abs(e)));
  }
  return worst;
}

template <class T>
void check_case(const json& fixture, double tolerance) {
  const json& options = fixture.at("options");
  nn::MultiHeadAttention<T> mha(nn::MultiHeadAttentionOptions{.embed_dim = options.at("embed_dim").get<Index>(),
                                                              .num_heads = options.at("num_heads").get<Index>(),
                                                              .kdim = options.at("kdim").get<Index>(),
                                                              .vdim = options.at("vdim").get<Index>(),
                                                              .bias = options.at("bias").get<bool>()});
  nn::StateDict<T> state;
  for (const auto& [name, encoded] : fixture.at("state_dict").items()) state.emplace(name, tensor_from<T>(encoded));
  mha.load_state_dict(state);  // strict: names and shapes exactly torch's

  std::map<std::string, Tensor<T>> inputs;
  for (const auto& [name, encoded] : fixture.at("inputs").items()) {
    inputs[name] = tensor_from<T>(encoded);
    inputs[name].set_requires_grad(true);
  }
  const mask::Mask m = veil_mask<T>(fixture);
  const bool self_attention = fixture.at("self_attention");
  Tensor<T> output, weights;
  const auto& need = fixture.at("need_weights");
  if (need.is_null()) {
    output = self_attention ? mha(inputs["x"], m) : mha(inputs["query"], inputs["key"], inputs["value"], m);
  } else {
    const auto mode = need == "per_head" ? nn::AttentionWeights::per_head : nn::AttentionWeights::average_over_heads;
    auto result = self_attention ? mha.forward_with_weights(inputs["x"], m, mode)
                                 : mha.forward_with_weights(inputs["query"], inputs["key"], inputs["value"], m, mode);
    output = result.output;
    weights = result.weights;
  }
  CHECK(scaled_error(output, fixture.at("output"), "output") <= tolerance);
  Tensor<T> loss = veil::sum(output * tensor_from<T>(fixture.at("grad_output")));
  if (weights.defined()) {
    CHECK(scaled_error(weights, fixture.at("weights"), "weights") <= tolerance);
    loss = loss + veil::sum(weights * tensor_from<T>(fixture.at("grad_weights")));
  }
  loss.backward();

  const auto parameters = mha.named_parameters();
  std::map<std::string, Tensor<T>> by_name(parameters.begin(), parameters.end());
  for (const auto& [name, expected] : fixture.at("grads").items()) {
    const Tensor<T> grad = inputs.count(name) ? inputs[name].grad() : by_name.at(name).grad();
    CHECK(scaled_error(grad, expected, "gradient of " + name) <= tolerance);
  }
}

}  // namespace

TEST_CASE("the MHA fixtures record the torch version that wrote them", "[nn][torch]") {
  const std::string version = fixtures().at("generated_by").at("torch_version");
  INFO("torch " << version);
  CHECK_FALSE(version.empty());
  CHECK(fixtures().at("cases").size() >= 10);
}

TEST_CASE("MultiHeadAttention matches torch.nn.MultiheadAttention in double", "[nn][torch]") {
  for (const auto& fixture : fixtures().at("cases")) {
    if (fixture.at("dtype") != "float64") continue;
    SECTION(fixture.at("name").get<std::string>()) { check_case<double>(fixture, 1e-10); }
  }
}

TEST_CASE("MultiHeadAttention matches torch.nn.MultiheadAttention in float", "[nn][torch]") {
  for (const auto& fixture : fixtures().at("cases")) {
    SECTION(fixture.at("name").get<std::string>() + " in float") { check_case<float>(fixture, 2e-4); }
  }
}

TEST_CASE("a torch key_padding_mask and mask::key_padding with the same lengths agree", "[nn][torch]") {
  // The fixture's padding is a suffix per row, which is what mask::key_padding(lengths) says.
  for (const auto& fixture : fixtures().at("cases")) {
    if (fixture.at("name") != "self-attention with a key_padding_mask") continue;
    nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2});
    nn::StateDict<double> state;
    for (const auto& [name, encoded] : fixture.at("state_dict").items()) state.emplace(name, tensor_from<double>(encoded));
    mha.load_state_dict(state);
    const json& padding = fixture.at("masks").at(0).at("tensor");
    const Index batch = padding.at("shape")[0].get<Index>(), length = padding.at("shape")[1].get<Index>();
    std::vector<Index> lengths(static_cast<std::size_t>(batch), 0);
    for (Index b = 0; b < batch; ++b)
      for (Index j = 0; j < length; ++j) lengths[static_cast<std::size_t>(b)] += padding.at("data")[b * length + j].get<int>() == 0;
    const Tensor<double> output = mha(tensor_from<double>(fixture.at("inputs").at("x")), mask::key_padding(lengths));
    CHECK(scaled_error(output, fixture.at("output"), "output") <= 1e-10);
  }
}

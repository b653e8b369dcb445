// nn::Linear, Embedding, LayerNorm, Dropout, GELU, ReLU and Sequential: values, initialisation,
// gradients (veil::gradcheck in double), parameter names and errors.
//
// gradcheck perturbs private copies of its inputs, so the module checks below point the module's
// public parameter handles at those copies inside the checked function.
#include <veil/autograd.hpp>
#include <veil/nn.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Tensor;
using veil_test::MessageContains;
namespace nn = veil::nn;

namespace {

template <class T>
std::vector<std::string> names_of(const nn::NamedTensors<T>& named) {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : named) names.push_back(name);
  return names;
}

Tensor<double> randn_grad(const veil::Shape& shape, veil::Generator& generator) {
  Tensor<double> x = veil::randn<double>(shape, generator);
  x.set_requires_grad(true);
  return x;
}

}  // namespace

TEST_CASE("Linear computes x times weight transposed plus bias with weight laid out out by in", "[nn][linear]") {
  nn::Linear lin(nn::LinearOptions{.in_features = 3, .out_features = 2});
  static_assert(std::is_same_v<decltype(lin), nn::Linear<float>>, "Linear deduces float");
  REQUIRE(lin.weight.shape() == veil::Shape{2, 3});
  REQUIRE(lin.bias.shape() == veil::Shape{2});
  {
    veil::NoGradGuard no_grad;
    veil::detail::copy_into(lin.weight.detach(), veil::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}));
    veil::detail::copy_into(lin.bias.detach(), veil::from_vector<float>({10, 20}, {2}));
  }
  const Tensor<float> y = lin(veil::from_vector<float>({1, 0, -1, 2, 1, 0}, {2, 3}));
  CHECK(y.shape() == veil::Shape{2, 2});
  CHECK(y.to_vector() == std::vector<float>{1 - 3 + 10, 4 - 6 + 20, 2 + 2 + 10, 8 + 5 + 20});
  CHECK(names_of(lin.named_parameters()) == std::vector<std::string>{"weight", "bias"});
}

TEST_CASE("Linear draws its initial values within one over sqrt of in_features from the given generator", "[nn][linear]") {
  veil::Generator a(5), b(5), c(6);
  nn::Linear<double> first(nn::LinearOptions{.in_features = 16, .out_features = 32}, a);
  nn::Linear<double> same(nn::LinearOptions{.in_features = 16, .out_features = 32, .generator = &b});
  nn::Linear<double> other(nn::LinearOptions{.in_features = 16, .out_features = 32}, c);
  CHECK(first.weight.to_vector() == same.weight.to_vector());
  CHECK(first.bias.to_vector() == same.bias.to_vector());
  CHECK(first.weight.to_vector() != other.weight.to_vector());
  double largest = 0.0;
  for (double w : first.weight.to_vector()) largest = std::max(largest, std::abs(w));
  for (double w : first.bias.to_vector()) largest = std::max(largest, std::abs(w));
  CHECK(largest <= 0.25);  // 1 / sqrt(16)
  CHECK(largest > 0.2);    // and the whole range is used
  CHECK(first.weight.requires_grad());
}

TEST_CASE("Linear gradients pass gradcheck in double with and without bias", "[nn][linear][gradcheck]") {
  veil::Generator generator(1);
  for (bool bias : {true, false}) {
    nn::Linear<double> lin(nn::LinearOptions{.in_features = 3, .out_features = 4, .bias = bias}, generator);
    std::vector<Tensor<double>> inputs;
    inputs.push_back(randn_grad({2, 2, 3}, generator));
    inputs.push_back(lin.weight);
    if (bias) inputs.push_back(lin.bias);
    const auto result = veil::gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          lin.weight = in[1];
          if (bias) lin.bias = in[2];
          return lin(in[0]);
        },
        inputs);
    INFO(result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("Linear rejects an input whose last dimension is not in_features", "[nn][linear][errors]") {
  nn::Linear lin(nn::LinearOptions{.in_features = 3, .out_features = 2});
  CHECK_THROWS_MATCHES(lin(veil::zeros<float>({2, 4})), veil::ShapeError,
                       MessageContains("input x must be [..., 3] (in_features = 3), got shape [2, 4]"));
  CHECK_THROWS_MATCHES(nn::Linear(nn::LinearOptions{.in_features = 0, .out_features = 2}), veil::ValueError,
                       MessageContains("in_features must be > 0, got 0"));
}

TEST_CASE("Embedding looks up rows and its gradient passes gradcheck", "[nn][embedding][gradcheck]") {
  veil::Generator generator(2);
  nn::Embedding<double> table(nn::EmbeddingOptions{.num_embeddings = 5, .embedding_dim = 3}, generator);
  CHECK(names_of(table.named_parameters()) == std::vector<std::string>{"weight"});
  const auto ids = veil::from_vector<std::int64_t>({4, 0, 4}, {1, 3});
  const Tensor<double> rows = table(ids);
  REQUIRE(rows.shape() == veil::Shape{1, 3, 3});
  CHECK(rows.at({0, 0, 1}) == table.weight.at({4, 1}));
  CHECK(rows.at({0, 1, 2}) == table.weight.at({0, 2}));
  const auto result = veil::gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        table.weight = in[0];
        return table(ids);
      },
      {table.weight});
  INFO(result.message);
  CHECK(result.passed);
  CHECK_THROWS_AS(table(veil::from_vector<std::int64_t>({5}, {1})), veil::ValueError);
}

TEST_CASE("LayerNorm has weight and bias by default and only a weight without bias and passes gradcheck", "[nn][layer_norm][gradcheck]") {
  nn::LayerNorm<double> with_bias(nn::LayerNormOptions{.normalized_shape = {4}});
  nn::LayerNorm<double> no_bias(nn::LayerNormOptions{.normalized_shape = {4}, .bias = false});
  CHECK(names_of(with_bias.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(names_of(no_bias.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK(with_bias.options().eps == 1e-5);
  veil::Generator generator(3);
  {
    veil::NoGradGuard no_grad;
    veil::detail::copy_into(with_bias.weight.detach(), veil::randn<double>({4}, generator));
    veil::detail::copy_into(with_bias.bias.detach(), veil::randn<double>({4}, generator));
  }
  const auto result = veil::gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        with_bias.weight = in[1];
        with_bias.bias = in[2];
        return with_bias(in[0]);
      },
      {randn_grad({2, 3, 4}, generator), with_bias.weight, with_bias.bias});
  INFO(result.message);
  CHECK(result.passed);
  // Each row normalised: mean 0, biased variance 1 (up to eps) with unit weight and no bias.
  const Tensor<double> y = no_bias(veil::randn<double>({3, 4}, generator) * 5.0 + 2.0);
  for (Index r = 0; r < 3; ++r) {
    double mean = 0, square = 0;
    for (Index c = 0; c < 4; ++c) mean += y.at({r, c}) / 4, square += y.at({r, c}) * y.at({r, c}) / 4;
    CHECK(std::abs(mean) < 1e-12);
    CHECK(std::abs(square - 1.0) < 1e-3);
  }
}

TEST_CASE("Dropout is the identity in eval mode and drops about p of the elements in training", "[nn][dropout]") {
  veil::Generator generator(4);
  nn::Dropout<float> drop(nn::DropoutOptions{.p = 0.25, .generator = &generator});
  const Tensor<float> x = veil::ones<float>({1000});
  drop.eval();
  const Tensor<float> same = drop(x);
  CHECK(same.shares_storage_with(x));
  CHECK(same.to_vector() == x.to_vector());
  drop.train();
  const std::vector<float> dropped = drop(x).to_vector();
  Index zeros = 0;
  for (float value : dropped) {
    if (value == 0.0f) ++zeros;
    else CHECK(value == Approx(1.0f / 0.75f));
  }
  CHECK(zeros > 200);
  CHECK(zeros < 300);
}

TEST_CASE("Dropout in training without a generator throws ValueError and p outside 0 to 1 is refused", "[nn][dropout][errors]") {
  nn::Dropout<float> drop(nn::DropoutOptions{.p = 0.1});
  CHECK_THROWS_MATCHES(drop(veil::ones<float>({3})), veil::ValueError, MessageContains("needs DropoutOptions.generator"));
  drop.eval();
  CHECK_NOTHROW(drop(veil::ones<float>({3})));
  CHECK_THROWS_MATCHES(nn::Dropout<float>(nn::DropoutOptions{.p = 1.0}), veil::ValueError,
                       MessageContains("p must be in [0, 1), got 1"));
}

TEST_CASE("GELU in erf and tanh forms matches the gelu op and passes gradcheck", "[nn][activation][gradcheck]") {
  veil::Generator generator(5);
  const Tensor<double> x = randn_grad({2, 5}, generator);
  for (auto form : {veil::GeluApproximation::none, veil::GeluApproximation::tanh}) {
    nn::GELU<double> gelu(nn::GELUOptions{.approximation = form});
    CHECK(gelu(x).to_vector() == veil::gelu(x, form).to_vector());
    const auto result = veil::gradcheck([&](const std::vector<Tensor<double>>& in) { return gelu(in[0]); }, {x});
    INFO(result.message);
    CHECK(result.passed);
  }
  nn::ReLU<double> relu;
  CHECK(relu(veil::from_vector<double>({-1, 2}, {2})).to_vector() == std::vector<double>{0, 2});
}

TEST_CASE("Sequential applies its modules in order and names them 0 1 2 like torch", "[nn][sequential][gradcheck]") {
  veil::Generator generator(6);
  auto first = std::make_shared<nn::Linear<double>>(nn::LinearOptions{.in_features = 3, .out_features = 5}, generator);
  auto second = std::make_shared<nn::Linear<double>>(nn::LinearOptions{.in_features = 5, .out_features = 2}, generator);
  nn::Sequential mlp(first, std::make_shared<nn::GELU<double>>(), second);
  static_assert(std::is_same_v<decltype(mlp), nn::Sequential<double>>, "deduced from the first module");
  CHECK(mlp.size() == 3);
  CHECK(names_of(mlp.named_parameters()) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  const Tensor<double> x = randn_grad({4, 3}, generator);
  CHECK(mlp(x).to_vector() == (*second)(veil::gelu((*first)(x))).to_vector());
  const auto result = veil::gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        first->weight = in[1];
        second->weight = in[2];
        return mlp(in[0]);
      },
      {x, first->weight, second->weight});
  INFO(result.message);
  CHECK(result.passed);
  nn::Sequential<float> empty;
  const Tensor<float> y = veil::ones<float>({2});
  CHECK(empty(y).shares_storage_with(y));
}

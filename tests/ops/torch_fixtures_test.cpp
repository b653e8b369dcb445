// veil against PyTorch: every case in tests/fixtures/ops_fixtures.json (written by
// make_ops_fixtures.py) runs through veil in double and in float, comparing the output and the
// gradient of every float input for the fixture's random upstream gradient.
#include <veil/ops.hpp>

#include <catch2/catch.hpp>

#include "support/fixtures.hpp"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using veil::Tensor;
using json = nlohmann::ordered_json;  // keeps the file's key order

namespace {

const json& fixtures() {
  static const json loaded = veil_test::load_fixture("ops_fixtures");
  return loaded;
}

template <class T>
Tensor<T> tensor_from(const json& encoded) {
  Tensor<T> out = Tensor<T>::empty(encoded.at("shape").get<veil::Shape>());  // also 0-d, unlike from_vector
  const auto& data = encoded.at("data");
  REQUIRE(static_cast<veil::Index>(data.size()) == out.numel());
  for (std::size_t i = 0; i < data.size(); ++i) out.data()[i] = static_cast<T>(data[i].get<double>());
  return out;
}

template <class T>
Tensor<T> run_op(const json& fixture, const std::map<std::string, Tensor<T>>& in) {
  const std::string op = fixture.at("op");
  const json& params = fixture.at("params");
  const auto input = [&](const char* name) { return in.count(name) ? in.at(name) : Tensor<T>(); };
  const auto indices = [&](const char* name) { return tensor_from<std::int64_t>(fixture.at("indices").at(name)); };
  if (op == "layer_norm")
    return veil::layer_norm(input("x"), params.at("normalized_shape").get<veil::Shape>(), input("weight"),
                            input("bias"), params.at("eps").get<double>());
  if (op == "cross_entropy") {
    const std::string reduction = params.at("reduction");
    veil::CrossEntropyOptions options{.ignore_index = params.at("ignore_index").get<std::int64_t>()};
    options.reduction = reduction == "none" ? veil::Reduction::none
                        : reduction == "sum" ? veil::Reduction::sum
                                             : veil::Reduction::mean;
    return veil::cross_entropy(input("logits"), indices("targets"), options);
  }
  if (op == "embedding") return veil::embedding(input("weight"), indices("indices"));
  if (op == "gelu")
    return veil::gelu(input("x"), params.at("approximate") == "tanh" ? veil::GeluApproximation::tanh
                                                                      : veil::GeluApproximation::none);
  if (op == "softmax") return veil::softmax(input("x"), params.at("dim").get<veil::Index>());
  if (op == "log_softmax") return veil::log_softmax(input("x"), params.at("dim").get<veil::Index>());
  if (op == "matmul") return veil::matmul(input("a"), input("b"));
  FAIL("fixture op '" << op << "' has no veil counterpart in this test");
  return Tensor<T>();
}

/// max_i |got_i - expected_i| / (1 + |expected_i|), after checking the shapes agree.
template <class T>
double scaled_error(const Tensor<T>& got, const json& expected, const std::string& what) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(got.shape() == expected.at("shape").get<veil::Shape>());
  const std::vector<T> values = got.to_vector();
  const auto& data = expected.at("data");
  double worst = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double reference = data[i].get<double>();
    worst = std::max(worst, std::abs(static_cast<double>(values[i]) - reference) / (1.0 + std::abs(reference)));
  }
  return worst;
}

/// Runs one fixture in precision T; `tolerance(fixture)` bounds every scaled error.
template <class T, class Tolerance>
void check_against_torch(const json& fixture, Tolerance tolerance) {
  const std::string name = fixture.at("op").get<std::string>() + ": " + fixture.at("name").get<std::string>();
  INFO(name);
  std::map<std::string, Tensor<T>> in;
  for (const auto& [key, encoded] : fixture.at("inputs").items())
    in[key] = tensor_from<T>(encoded).set_requires_grad(true);
  Tensor<T> out = run_op(fixture, in);
  const double bound = tolerance(fixture);
  CHECK(scaled_error(out, fixture.at("output"), name + ", output") <= bound);
  out.backward(tensor_from<T>(fixture.at("grad_output")));
  for (const auto& [key, encoded] : fixture.at("grads").items())
    CHECK(scaled_error(in.at(key).grad(), encoded, name + ", gradient of " + key) <= bound);
}

}  // namespace

TEST_CASE("the fixture file records its generator and covers every op", "[ops][torch_fixtures]") {
  const json& all = fixtures();
  REQUIRE(all.begin().key() == "generated_by");
  CHECK(all.at("generated_by").at("script") == "tests/fixtures/make_ops_fixtures.py");
  CHECK_FALSE(all.at("generated_by").at("torch_version").get<std::string>().empty());
  std::set<std::string> ops;
  for (const auto& fixture : all.at("cases")) ops.insert(fixture.at("op").get<std::string>());
  CHECK(ops == std::set<std::string>{"layer_norm", "cross_entropy", "embedding", "gelu", "softmax", "log_softmax",
                                     "matmul"});
}

TEST_CASE("veil matches PyTorch's outputs and gradients in double", "[ops][torch_fixtures]") {
  // Both sides compute in float64 from identical inputs; only summation order and libm differ,
  // a few ulps on values of order 1, so 1e-10 (relative to 1 + |expected|) has a wide margin.
  for (const auto& fixture : fixtures().at("cases"))
    check_against_torch<double>(fixture, [](const json&) { return 1e-10; });
}

TEST_CASE("veil matches PyTorch's outputs and gradients in float", "[ops][torch_fixtures]") {
  // The fixtures hold float64 results; veil runs on the inputs rounded to float. Rounding moves an
  // input by up to u |x| with u = 2^-24, and the kernels' own float rounding adds a few u per
  // result (rows here have at most 24 elements; layer_norm and cross_entropy accumulate in
  // double). An output moves by at most about |x| times that relative to its row's spread
  // (layer_norm's offset-1000 case is the extreme: x̂ moves by ~1000 u), so the bound is
  // 16 u (1 + max|input|); the worst case measured uses under a tenth of it.
  const auto tolerance = [](const json& fixture) {
    double largest = 0.0;
    for (const auto& [key, encoded] : fixture.at("inputs").items())
      for (const auto& value : encoded.at("data")) largest = std::max(largest, std::abs(value.get<double>()));
    return 16.0 * 0x1.0p-24 * (1.0 + largest);
  };
  for (const auto& fixture : fixtures().at("cases")) check_against_torch<float>(fixture, tolerance);
}

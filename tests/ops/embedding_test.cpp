#include <veil/ops.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cstdint>
#include <vector>

using veil::Tensor;
using veil_test::MessageContains;

namespace {

Tensor<std::int64_t> indices_of(const std::vector<std::int64_t>& values, veil::Shape shape) {
  return veil::from_vector<std::int64_t>(values, std::move(shape));
}

}  // namespace

TEST_CASE("embedding gathers the indexed rows and appends the feature dimension", "[ops][embedding]") {
  auto weight = veil::arange<double>(0, 8).reshape({4, 2});  // row v holds {2v, 2v + 1}
  auto out = veil::embedding(weight, indices_of({3, 0, 3, 1}, {2, 2}));
  CHECK(out.shape() == veil::Shape{2, 2, 2});
  CHECK(out.to_vector() == std::vector<double>{6, 7, 0, 1, 6, 7, 2, 3});
  CHECK(veil::embedding(weight, veil::scalar<std::int64_t>(2)).shape() == veil::Shape{2});  // 0-d indices give one row
}

TEST_CASE("embedding backward scatter-adds repeated indices into the table gradient", "[ops][embedding]") {
  auto weight = veil::zeros<double>({4, 2}).set_requires_grad(true);
  auto out = veil::embedding(weight, indices_of({3, 0, 3, 3}, {4}));
  out.backward(veil::from_vector<double>({1, 2, 10, 20, 100, 200, 1000, 2000}, {4, 2}));
  // Row 3 receives lookups 0, 2 and 3; rows 1 and 2 are never read and get exactly 0.
  CHECK(weight.grad().to_vector() == std::vector<double>{10, 20, 0, 0, 0, 0, 1101, 2202});
}

TEST_CASE("embedding passes gradcheck", "[ops][embedding][gradcheck]") {
  veil::Generator gen(2);
  auto weight = veil::randn<double>({5, 3}, gen).set_requires_grad(true);
  const auto indices = indices_of({4, 0, 4, 2, 2, 4}, {2, 3});
  auto result = veil::gradcheck([&](const auto& in) { return veil::embedding(in[0], indices); }, {weight});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("embedding gives the same values and gradients for non-contiguous weight and indices", "[ops][embedding]") {
  veil::Generator gen(6);
  auto weight_strided = veil::randn<double>({3, 6}, gen).transpose(0, 1).detach().set_requires_grad(true);  // [6, 3]
  auto weight = veil::detail::copy_contiguous(weight_strided).set_requires_grad(true);
  auto indices_strided = indices_of({5, 1, 0, 5, 2, 2}, {3, 2}).transpose(0, 1);  // [2, 3]
  auto indices = veil::detail::copy_contiguous(indices_strided);
  REQUIRE_FALSE(weight_strided.is_contiguous());
  REQUIRE_FALSE(indices_strided.is_contiguous());
  auto grad_output = veil::randn<double>({2, 3, 3}, gen);

  auto out_strided = veil::embedding(weight_strided, indices_strided);
  auto out = veil::embedding(weight, indices);
  CHECK(out_strided.to_vector() == out.to_vector());
  out_strided.backward(grad_output);
  out.backward(grad_output);
  CHECK(weight_strided.grad().to_vector() == weight.grad().to_vector());
}

TEST_CASE("embedding backward twice on a retained graph is bit-identical", "[ops][embedding]") {
  veil::Generator gen(9);
  auto weight = veil::randn<double>({7, 4}, gen).set_requires_grad(true);
  auto out = veil::embedding(weight, veil::randint<std::int64_t>({5, 3}, gen, 0, 7));
  auto grad_output = veil::randn<double>({5, 3, 4}, gen);
  out.backward(grad_output, /*retain_graph=*/true);
  const auto first = weight.grad().to_vector();
  weight.zero_grad();
  out.backward(grad_output);
  CHECK(weight.grad().to_vector() == first);
}

TEST_CASE("embedding gradients do not depend on the thread count", "[ops][embedding]") {
  // Many lookups into few rows: every table row sums thousands of gradient rows.
  veil::Generator gen(13);
  const auto indices = veil::randint<std::int64_t>({64, 512}, gen, 0, 50);
  const auto weight0 = veil::randn<float>({50, 32}, gen);
  const auto grad_output = veil::randn<float>({64, 512, 32}, gen);
  const int threads_before = veil::num_threads();
  std::vector<std::vector<float>> results[2];
  for (int run = 0; run < 2; ++run) {
    veil::set_num_threads(run + 1);
    auto weight = veil::detail::copy_contiguous(weight0).set_requires_grad(true);
    auto out = veil::embedding(weight, indices);
    out.backward(grad_output);
    results[run] = {out.to_vector(), weight.grad().to_vector()};
  }
  veil::set_num_threads(threads_before);
  CHECK(results[0] == results[1]);
}

TEST_CASE("embedding rejects an out-of-range index naming its position and value and the range", "[ops][embedding][errors]") {
  auto weight = veil::zeros<double>({65, 4});
  REQUIRE_THROWS_MATCHES(veil::embedding(weight, indices_of({0, 1, 64, 70, 2}, {5})), veil::ValueError,
                         MessageContains("embedding: indices[3] = 70 is out of range [0, 65)"));
  REQUIRE_THROWS_MATCHES(veil::embedding(weight, indices_of({0, 1, 2, -1}, {2, 2})), veil::ValueError,
                         MessageContains("embedding: indices[1, 1] = -1 is out of range [0, 65)"));
  REQUIRE_THROWS_MATCHES(veil::embedding(veil::zeros<double>({65}), indices_of({0}, {1})), veil::ShapeError,
                         MessageContains("weight must be 2-d [num_embeddings, embedding_dim], got shape [65]"));
}

TEST_CASE("embedding checks every index before recording any history", "[ops][embedding][errors]") {
  // A bad index late in the tensor must not leave a half-written result or a graph node behind:
  // the call throws and the weight's gradient stays undefined.
  auto weight = veil::zeros<double>({3, 2}).set_requires_grad(true);
  CHECK_THROWS_AS(veil::embedding(weight, indices_of({0, 1, 2, 3}, {4})), veil::ValueError);
  CHECK_FALSE(weight.grad().defined());
}

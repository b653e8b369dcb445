// Out-of-bounds canary for the ops that read strided views in place: matmul (Eigen maps with an
// outer stride), softmax, log_softmax, layer_norm and cross_entropy. Every input and the upstream
// gradient are views into buffers otherwise filled with NaN or 1e30 (see support/out_of_bounds.hpp);
// outputs and gradients must be bit-identical to the run on the same views with the gaps holding
// 0. (Not to contiguous inputs in every case: a batch of matrices that cannot be folded into one
// tall matrix is multiplied item by item, and Eigen's GEMM rounds an M-row product differently
// from the rows of a taller one.) Sizes are odd so that no row ends on a vector-register or
// blocking boundary.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include "support/out_of_bounds.hpp"

#include <limits>
#include <string>
#include <vector>

using veil::Shape;
using veil::Tensor;
using veil_test::Layout;

namespace {

struct Case {
  std::string name;
  std::vector<Shape> shapes;  // of the inputs
  veil_test::TensorFunction<float> fn;
};

std::vector<Case> cases() {
  return {
      {"matmul of two matrices", {{37, 53}, {53, 29}}, [](const auto& x) { return veil::matmul(x[0], x[1]); }},
      {"matmul of a batch against one matrix", {{3, 37, 53}, {53, 29}},
       [](const auto& x) { return veil::matmul(x[0], x[1]); }},
      {"matmul with broadcast batch dimensions", {{2, 3, 37, 20}, {3, 20, 45}},
       [](const auto& x) { return veil::matmul(x[0], x[1]); }},
      {"matmul against a transposed view", {{37, 53}, {29, 53}},
       [](const auto& x) { return veil::matmul(x[0], x[1].transpose(0, 1)); }},
      {"matmul of a vector and a matrix", {{53}, {53, 29}}, [](const auto& x) { return veil::matmul(x[0], x[1]); }},
      {"matmul of a matrix and a vector", {{37, 53}, {53}}, [](const auto& x) { return veil::matmul(x[0], x[1]); }},
      {"softmax over the last dimension", {{3, 5, 131}}, [](const auto& x) { return veil::softmax(x[0], -1); }},
      {"softmax over a middle dimension", {{3, 67, 9}}, [](const auto& x) { return veil::softmax(x[0], 1); }},
      {"log_softmax over the last dimension", {{3, 5, 131}}, [](const auto& x) { return veil::log_softmax(x[0], -1); }},
      {"layer_norm with weight and bias", {{3, 7, 45}, {45}, {45}},
       [](const auto& x) { return veil::layer_norm(x[0], {45}, x[1], x[2]); }},
      {"cross_entropy", {{37, 29}},
       [](const auto& x) {
         std::vector<std::int64_t> targets;
         for (std::int64_t r = 0; r < 37; ++r) targets.push_back((r * 7) % 29);
         // Broadcast to a vector so that the upstream gradient can be a poisoned view as well.
         return veil::cross_entropy(x[0], veil::from_vector<std::int64_t>(targets, {37})) * veil::ones<float>({5});
       }},
  };
}

}  // namespace

TEST_CASE("ops on views into NaN or 1e30 padded buffers are bit-identical to the same views padded with 0",
          "[ops][out_of_bounds]") {
  for (const Case& c : cases()) {
    veil::Generator gen(7);
    std::vector<Tensor<float>> values;
    for (const Shape& shape : c.shapes) values.push_back(veil::randn<float>(shape, gen));
    const Shape out_shape = c.fn(values).shape();
    const Tensor<float> grad_out = veil::randn<float>(out_shape, gen);
    const auto views = [&](Layout layout, float padding) {
      std::vector<Tensor<float>> out;
      for (const auto& t : values) out.push_back(veil_test::poisoned_view(t, layout, padding));
      return out;
    };
    for (const Layout layout : veil_test::all_layouts()) {
      const auto expected =
          veil_test::run_bits(c.fn, views(layout, 0.0f), veil_test::poisoned_view(grad_out, layout, 0.0f));
      for (const float poison : {std::numeric_limits<float>::quiet_NaN(), 1e30f}) {
        INFO(c.name << ", " << veil_test::layout_name(layout) << " layout, poison " << poison);
        const auto got =
            veil_test::run_bits(c.fn, views(layout, poison), veil_test::poisoned_view(grad_out, layout, poison));
        CHECK(got.out == expected.out);
        REQUIRE(got.grads.size() == expected.grads.size());
        for (std::size_t input = 0; input < got.grads.size(); ++input) {
          INFO("gradient of input " << input);
          CHECK(got.grads[input] == expected.grads[input]);
        }
      }
    }
  }
}

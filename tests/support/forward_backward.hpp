// Runs a function of tensors forward and backward and collects the values, for tests that compare
// two ways of computing the same thing (views vs copies, retained graphs run twice, ...).
#pragma once

#include <functional>
#include <vector>

#include <veil/veil.hpp>

namespace veil_test {

using Function = std::function<veil::Tensor<double>(const std::vector<veil::Tensor<double>>&)>;

struct Outcome {
  std::vector<double> out;
  std::vector<std::vector<double>> grads;  // one per input; empty when no gradient reached it
};

/// fn on fresh leaves that share the inputs' storage and geometry (views stay views), then
/// backward with a seeded random upstream gradient.
inline Outcome run_forward_backward(const Function& fn, const std::vector<veil::Tensor<double>>& inputs) {
  std::vector<veil::Tensor<double>> leaves;
  for (const auto& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
  auto y = fn(leaves);
  veil::Generator gen(99);
  y.backward(veil::randn<double>(y.shape(), gen));
  Outcome outcome{y.to_vector(), {}};
  for (const auto& leaf : leaves)
    outcome.grads.push_back(leaf.grad().defined() ? leaf.grad().to_vector() : std::vector<double>{});
  return outcome;
}

}  // namespace veil_test

// Helpers for module tests: comparing outputs and giving every parameter random values.
#pragma once

#include <algorithm>
#include <cmath>

#include <catch2/catch.hpp>
#include <veil/veil.hpp>

namespace veil_test {

/// max |a - b| over equally shaped tensors.
template <class T>
double max_difference(const veil::Tensor<T>& a, const veil::Tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto x = a.to_vector(), y = b.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
  return worst;
}

/// Every parameter drawn from N(0, stddev²): constructors zero biases and set LayerNorm gains to
/// one, which would hide a mistake in how those parameters are used.
template <class T>
void randomise(veil::nn::Module<T>& module, veil::Generator& generator, double stddev) {
  veil::NoGradGuard no_grad;
  for (auto& [name, parameter] : module.named_parameters())
    veil::detail::copy_into(parameter.detach(), veil::randn<T>(parameter.shape(), generator) * static_cast<T>(stddev));
}

}  // namespace veil_test

// gradcheck: compares the Jacobian that backward computes with central finite differences, in
// double. Public so users can check their own ops the way veil's tests check veil's.
//
// For f: inputs -> output, row o of the analytic Jacobian is the gradient of output[o] (one
// backward per output element, on a fresh graph); column k of the numeric one is
// (f(x + eps e_k) - f(x - eps e_k)) / (2 eps). Entry-wise they must satisfy
// |analytic - numeric| <= atol + rtol |numeric|. Central differences have truncation error
// O(eps^2) and rounding error O(1e-16 / eps): eps = 1e-6 balances both near 1e-10.
#pragma once

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "veil/autograd/engine.hpp"

namespace veil {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-5;  // absolute tolerance per Jacobian entry
  double rtol = 1e-3;  // relative tolerance per Jacobian entry
};

struct GradcheckResult {
  bool passed = true;
  std::string message;  // the first mismatching entry, when not passed
  explicit operator bool() const { return passed; }
};

/// Checks the gradients of fn at `inputs` with respect to every input that has requires_grad set.
/// fn must be deterministic (dropout: reuse one seed inside fn).
inline GradcheckResult gradcheck(const std::function<Tensor<double>(const std::vector<Tensor<double>>&)>& fn,
                                 const std::vector<Tensor<double>>& inputs, const GradcheckOptions& options = {}) {
  GradModeGuard grad_mode(true);
  // Private contiguous copies, so perturbing them cannot touch the caller's tensors.
  std::vector<Tensor<double>> leaves;
  for (const auto& input : inputs) {
    Tensor<double> copy = detail::copy_contiguous(input);
    if (input.requires_grad()) copy.set_requires_grad(true);
    leaves.push_back(copy);
  }
  Tensor<double> output;
  {
    NoGradGuard no_grad;
    output = fn(leaves);
  }
  const Index outputs = output.numel();

  GradcheckResult result;
  for (std::size_t which = 0; which < leaves.size() && result.passed; ++which) {
    if (!leaves[which].requires_grad()) continue;
    const Index count = leaves[which].numel();
    std::vector<double> analytic(static_cast<std::size_t>(outputs * count), 0.0);
    for (Index o = 0; o < outputs; ++o) {
      for (auto& leaf : leaves) leaf.zero_grad();
      Tensor<double> out = fn(leaves);
      if (!out.requires_grad()) break;  // output independent of every input: analytic Jacobian is 0
      Tensor<double> seed = zeros<double>(out.shape());
      seed.data()[o] = 1.0;
      out.backward(seed);
      const Tensor<double> grad = leaves[which].grad();
      if (!grad.defined()) continue;
      const std::vector<double> row = grad.to_vector();
      for (Index k = 0; k < count; ++k) analytic[o * count + k] = row[k];
    }
    double* x = leaves[which].data();
    for (Index k = 0; k < count && result.passed; ++k) {
      const double saved = x[k];
      std::vector<double> plus, minus;
      {
        NoGradGuard no_grad;
        x[k] = saved + options.eps;
        plus = fn(leaves).to_vector();
        x[k] = saved - options.eps;
        minus = fn(leaves).to_vector();
      }
      x[k] = saved;
      for (Index o = 0; o < outputs; ++o) {
        const double numeric = (plus[o] - minus[o]) / (2 * options.eps);
        const double got = analytic[o * count + k];
        const bool both_nonfinite = !std::isfinite(numeric) && !std::isfinite(got);
        if (!both_nonfinite && !(std::abs(got - numeric) <= options.atol + options.rtol * std::abs(numeric))) {
          std::ostringstream message;
          message << "gradcheck: input " << which << ", element " << k << ", output element " << o
                  << ": analytic " << got << " vs numeric " << numeric;
          result = {false, message.str()};
          break;
        }
      }
    }
  }
  return result;
}

}  // namespace veil

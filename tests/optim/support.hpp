// Helpers shared by the optim tests: gradients set by hand, deep copies of state dicts, and
// bitwise comparison of tensors.
#pragma once

#include <veil/optim.hpp>

#include <cstring>
#include <string>
#include <vector>

namespace optim_test {

/// Makes `values` the gradient of the leaf `parameter` (replacing any previous one), through the
/// public path: backward from the leaf itself with an explicit upstream gradient.
template <class T>
void set_grad(const veil::Tensor<T>& parameter, const std::vector<T>& values) {
  parameter.zero_grad();
  parameter.backward(veil::from_vector<T>(values, parameter.shape()));
}

/// A contiguous parameter (requires_grad) holding `values` with `shape`.
template <class T>
veil::Tensor<T> parameter(const std::vector<T>& values, const veil::Shape& shape) {
  veil::Tensor<T> out = veil::from_vector<T>(values, shape);
  out.set_requires_grad(true);
  return out;
}

/// Deep copy: the result shares no storage with `dict`.
template <class T>
veil::nn::StateDict<T> deep_copy(const veil::nn::StateDict<T>& dict) {
  veil::nn::StateDict<T> out;
  for (const auto& [name, tensor] : dict) out.emplace(name, veil::detail::copy_contiguous(tensor));
  return out;
}

/// True when both tensors have the same shape and the same bits in every element.
template <class T>
bool bitwise_equal(const veil::Tensor<T>& a, const veil::Tensor<T>& b) {
  if (a.shape() != b.shape()) return false;
  const auto x = a.to_vector(), y = b.to_vector();
  return std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

}  // namespace optim_test

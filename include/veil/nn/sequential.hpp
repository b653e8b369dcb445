// nn::Sequential: modules applied in order, registered as children "0", "1", ... like
// torch.nn.Sequential, so "mlp.0.weight" names the first layer's weight in both libraries.
//
//   auto mlp = std::make_shared<nn::Sequential<float>>();
//   mlp->push_back(std::make_shared<nn::Linear<float>>(nn::LinearOptions{.in_features = 8, .out_features = 32}));
//   mlp->push_back(std::make_shared<nn::GELU<float>>());
//   Tensor<float> y = (*mlp)(x);
//
// Any module with `Tensor<T> forward(const Tensor<T>&) const` fits, user-defined ones included.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "veil/nn/module.hpp"

namespace veil::nn {

template <class T = float>
class Sequential : public Module<T> {
 public:
  Sequential() = default;

  template <class... Modules>
  explicit Sequential(std::shared_ptr<Modules>... modules) {
    (push_back(std::move(modules)), ...);
  }

  /// Appends `module` (registered as the next index) and returns it.
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    static_assert(std::is_base_of_v<Module<T>, M>, "Sequential: elements must derive from nn::Module<T>");
    this->register_module(std::to_string(steps_.size()), module);
    const M* raw = module.get();
    steps_.push_back([raw](const Tensor<T>& x) { return raw->forward(x); });
    return module;
  }

  /// x through every module in order (x itself when empty).
  Tensor<T> forward(const Tensor<T>& x) const {
    Tensor<T> y = x;
    for (const auto& step : steps_) y = step(y);
    return y;
  }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  std::size_t size() const { return steps_.size(); }

 private:
  // The children own the modules (Module keeps them alive); these call their forward.
  std::vector<std::function<Tensor<T>(const Tensor<T>&)>> steps_;
};

template <class M, class... Ms>
Sequential(std::shared_ptr<M>, std::shared_ptr<Ms>...) -> Sequential<typename M::value_type>;

}  // namespace veil::nn

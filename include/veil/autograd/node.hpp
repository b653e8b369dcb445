// Node: one backward step of the define-by-run graph. An op computes its output, then `record`
// attaches a Node holding the op's backward closure and one edge per differentiable input.
//
// Rule for closures: capture only detached tensors (`x.detach()`): a saved tensor then holds
// data, not history, so the graph has no cycles and frees itself once backward has run.
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "veil/autograd/grad_mode.hpp"
#include "veil/tensor/tensor.hpp"

namespace veil::autograd {

/// Where the gradient of one op input goes: the Node that produced it, or the leaf it is.
/// Both null when that input needs no gradient.
template <class T>
struct Edge {
  std::shared_ptr<Node<T>> node;
  std::shared_ptr<detail::TensorImpl<T>> leaf;
  bool needs_grad() const { return node != nullptr || leaf != nullptr; }
  const Shape& shape() const { return node ? node->output_shape : leaf->shape; }
};

template <class T>
class Node {
 public:
  Node(const char* name, Shape shape) : output_shape(std::move(shape)), name_(name) {}
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// Frees a long chain iteratively: a node about to die hands its edges to this loop instead
  /// of destroying them recursively (a 100,000-op chain would otherwise overflow the stack).
  virtual ~Node() {
    std::vector<std::shared_ptr<Node>> dying;
    for (auto& edge : edges)
      if (edge.node) dying.push_back(std::move(edge.node));
    edges.clear();
    while (!dying.empty()) {
      std::shared_ptr<Node> node = std::move(dying.back());
      dying.pop_back();
      if (node.use_count() == 1) {
        for (auto& edge : node->edges)
          if (edge.node) dying.push_back(std::move(edge.node));
        node->edges.clear();
      }
    }
  }

  const char* name() const { return name_; }
  bool released() const { return released_; }
  bool needs_input_grad(std::size_t input) const { return input < edges.size() && edges[input].needs_grad(); }

  /// Gradients with respect to each input (undefined where an input needs none), given the
  /// gradient with respect to this node's output.
  virtual std::vector<Tensor<T>> apply(const Tensor<T>& grad_output) = 0;
  /// Drops the saved tensors and the edges: the graph behind this node is freed.
  virtual void release() {
    released_ = true;
    edges.clear();
  }

  std::vector<Edge<T>> edges;
  Shape output_shape;
  Tensor<T> pending_grad;  // the engine sums incoming gradients here

 private:
  const char* name_;
  bool released_ = false;
};

/// A Node whose backward is a closure: (grad_output) or (grad_output, node) -> gradients.
template <class T, class Backward>
class FunctionNode final : public Node<T> {
 public:
  FunctionNode(const char* name, Shape output_shape, Backward backward)
      : Node<T>(name, std::move(output_shape)), backward_(std::move(backward)) {}

  std::vector<Tensor<T>> apply(const Tensor<T>& grad_output) override {
    if constexpr (std::is_invocable_v<Backward&, const Tensor<T>&, const Node<T>&>)
      return (*backward_)(grad_output, static_cast<const Node<T>&>(*this));
    else
      return (*backward_)(grad_output);
  }
  void release() override {
    backward_.reset();
    Node<T>::release();
  }

 private:
  std::optional<Backward> backward_;
};

/// True when an op over `inputs` must record history.
template <class T>
bool needs_history(const Tensor<T>* const* inputs, std::size_t count) {
  if constexpr (!Tensor<T>::is_differentiable) {
    return false;
  } else {
    if (!is_grad_enabled()) return false;
    for (std::size_t i = 0; i < count; ++i)
      if (inputs[i]->defined() && inputs[i]->requires_grad()) return true;
    return false;
  }
}

/// Attaches history to `output` when grad mode is on and an input requires grad; returns output.
/// `backward` maps the output gradient to one gradient per input, in the order of `inputs`.
template <class T, class Backward>
Tensor<T> record(const char* name, Tensor<T> output, const Tensor<T>* const* inputs, std::size_t count,
                 Backward&& backward) {
  if (!needs_history<T>(inputs, count)) return output;
  auto node = std::make_shared<FunctionNode<T, std::decay_t<Backward>>>(name, output.shape(),
                                                                         std::forward<Backward>(backward));
  node->edges.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    const Tensor<T>& input = *inputs[i];
    if (!input.defined() || !input.requires_grad()) continue;
    if (input.grad_fn()) node->edges[i].node = input.grad_fn();
    else node->edges[i].leaf = input.impl_ptr();
  }
  auto& impl = output.impl();
  impl.requires_grad = true;
  impl.grad_fn = std::move(node);
  return output;
}

template <class T, class Backward>
Tensor<T> record(const char* name, Tensor<T> output, std::initializer_list<const Tensor<T>*> inputs,
                 Backward&& backward) {
  return record(name, std::move(output), inputs.begin(), inputs.size(), std::forward<Backward>(backward));
}

template <class T, class Backward>
Tensor<T> record(const char* name, Tensor<T> output, const std::vector<const Tensor<T>*>& inputs,
                 Backward&& backward) {
  return record(name, std::move(output), inputs.data(), inputs.size(), std::forward<Backward>(backward));
}

}  // namespace veil::autograd

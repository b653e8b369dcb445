// The backward pass: topological order from the root, gradients summed per node, accumulated
// into leaves, then (unless retain_graph) the graph is released leaves-first.
#pragma once

#include <algorithm>
#include <unordered_set>
#include <utility>
#include <vector>

#include "veil/autograd/grad_mode.hpp"
#include "veil/autograd/node.hpp"
#include "veil/tensor/creation.hpp"

namespace veil::autograd {

namespace detail {

/// a + b for equally shaped tensors, as a fresh contiguous tensor.
template <class T>
Tensor<T> sum_of(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> out = veil::detail::copy_contiguous(a);
  const Tensor<T> rhs = b.is_contiguous() ? b : veil::detail::copy_contiguous(b);
  T* dst = out.data();
  const T* src = rhs.data();
  parallel_for(0, out.numel(), veil::detail::elementwise_grain, [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i) dst[i] += src[i];
  });
  return out;
}

template <class T>
void accumulate_into_leaf(veil::detail::TensorImpl<T>& leaf, const Tensor<T>& grad) {
  std::lock_guard<std::mutex> lock(leaf.grad_mutex);
  if (!leaf.grad) {
    leaf.grad = veil::detail::copy_contiguous(grad).impl_ptr();
    return;
  }
  const Tensor<T> rhs = grad.is_contiguous() ? grad : veil::detail::copy_contiguous(grad);
  T* dst = leaf.grad->storage->data() + leaf.grad->offset;
  const T* src = rhs.data();
  parallel_for(0, rhs.numel(), veil::detail::elementwise_grain, [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i) dst[i] += src[i];
  });
}

/// Nodes reachable from root, each before every node it sends gradients to.
template <class T>
std::vector<Node<T>*> topological_order(Node<T>* root) {
  std::vector<Node<T>*> post_order;
  std::unordered_set<Node<T>*> seen;
  std::vector<std::pair<Node<T>*, std::size_t>> stack{{root, 0}};
  seen.insert(root);
  while (!stack.empty()) {
    auto& [node, next_edge] = stack.back();
    if (next_edge < node->edges.size()) {
      Node<T>* child = node->edges[next_edge++].node.get();
      if (child != nullptr && seen.insert(child).second) stack.emplace_back(child, 0);
    } else {
      post_order.push_back(node);
      stack.pop_back();
    }
  }
  std::reverse(post_order.begin(), post_order.end());
  return post_order;
}

template <class T>
void run_backward(const Tensor<T>& root, const Tensor<T>& grad_root, bool retain_graph) {
  VEIL_CHECK(root.requires_grad(), AutogradError,
             "backward: the tensor does not require grad (no input of the computation had requires_grad set)");
  VEIL_CHECK(grad_root.shape() == root.shape(), ShapeError, "backward: grad_output has shape ",
             to_string(grad_root.shape()), " but the tensor has shape ", to_string(root.shape()));
  NoGradGuard no_grad;
  if (root.is_leaf()) {
    accumulate_into_leaf(root.impl(), grad_root);
    return;
  }
  const std::vector<Node<T>*> order = topological_order(root.grad_fn().get());
  for (Node<T>* node : order) {
    VEIL_CHECK(!node->released(), AutogradError, "backward: the graph through '", node->name(),
               "' was already freed by an earlier backward; pass retain_graph = true to the first backward");
    node->pending_grad = Tensor<T>();  // drop what a backward that threw midway left behind
  }
  root.grad_fn()->pending_grad = grad_root;
  for (Node<T>* node : order) {
    if (!node->pending_grad.defined()) continue;
    const Tensor<T> grad_output = std::move(node->pending_grad);
    node->pending_grad = Tensor<T>();
    std::vector<Tensor<T>> grads = node->apply(grad_output);
    VEIL_CHECK(grads.size() == node->edges.size(), AutogradError, "backward of '", node->name(), "' returned ",
               grads.size(), " gradients for ", node->edges.size(), " inputs");
    for (std::size_t i = 0; i < grads.size(); ++i) {
      const Edge<T>& edge = node->edges[i];
      if (!edge.needs_grad() || !grads[i].defined()) continue;
      VEIL_CHECK(grads[i].shape() == edge.shape(), AutogradError, "backward of '", node->name(),
                 "' returned a gradient of shape ", to_string(grads[i].shape()), " for input ", i, " of shape ",
                 to_string(edge.shape()));
      if (edge.leaf) {
        accumulate_into_leaf(*edge.leaf, grads[i]);
      } else {
        Tensor<T>& pending = edge.node->pending_grad;
        pending = pending.defined() ? sum_of(pending, grads[i]) : std::move(grads[i]);
      }
    }
  }
  if (!retain_graph) {
    // Leaves-first, so releasing a node never cascades into destroying a node not yet released.
    for (auto it = order.rbegin(); it != order.rend(); ++it) (*it)->release();
  }
}

}  // namespace detail

}  // namespace veil::autograd

namespace veil {

template <class T>
void Tensor<T>::backward(bool retain_graph) const {
  VEIL_CHECK(numel() == 1, ShapeError, "backward: without grad_output the tensor must have one element, got shape ",
             to_string(shape()), "; pass grad_output of that shape");
  autograd::detail::run_backward(*this, full<T>(shape(), T(1)), retain_graph);
}

template <class T>
void Tensor<T>::backward(const Tensor<T>& grad_output, bool retain_graph) const {
  autograd::detail::run_backward(*this, grad_output, retain_graph);
}

}  // namespace veil

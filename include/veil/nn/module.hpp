// nn::Module: the base of every layer. A module registers its parameters, buffers and child
// modules under names; dotted paths ("blocks.3.attn.in_proj_weight") then name them for the
// optimizer, for checkpoints and for PyTorch state dicts, which map one to one.
//
// Tensors are handles: a module keeps its own handle to each parameter, and load_state_dict
// copies values *into* the existing storage, so every handle stays valid.
#pragma once

#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "veil/ops.hpp"

namespace veil::nn {

/// Named tensors: what state_dict() returns and load_state_dict() and checkpoints take.
template <class T>
using StateDict = std::map<std::string, Tensor<T>>;

template <class T>
using NamedTensors = std::vector<std::pair<std::string, Tensor<T>>>;

template <class T = float>
class Module {
 public:
  using value_type = T;

  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  /// Registers a trainable tensor under `name` (sets requires_grad) and returns its handle.
  Tensor<T> register_parameter(const std::string& name, Tensor<T> value) {
    check_new_name(name);
    value.set_requires_grad(true);
    parameters_.emplace_back(name, value);
    return value;
  }

  /// Registers a non-trainable tensor that belongs in the state dict (running statistics, ...).
  Tensor<T> register_buffer(const std::string& name, Tensor<T> value) {
    check_new_name(name);
    buffers_.emplace_back(name, value);
    return value;
  }

  /// Registers a child module; its entries appear as "name.<child entry>".
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    check_new_name(name);
    VEIL_CHECK(module != nullptr, ValueError, "register_module: module '", name, "' is null");
    children_.emplace_back(name, module);
    return module;
  }

  /// Parameters with dotted path names, in registration order (own first, then children's).
  NamedTensors<T> named_parameters() const {
    NamedTensors<T> out;
    collect(out, "", /*buffers=*/false);
    return out;
  }
  std::vector<Tensor<T>> parameters() const {
    std::vector<Tensor<T>> out;
    for (auto& [name, tensor] : named_parameters()) out.push_back(tensor);
    return out;
  }
  NamedTensors<T> named_buffers() const {
    NamedTensors<T> out;
    collect(out, "", /*buffers=*/true);
    return out;
  }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  /// Parameters and buffers by name (detached handles sharing storage with the module).
  StateDict<T> state_dict() const {
    StateDict<T> out;
    for (auto& [name, tensor] : named_parameters()) out.emplace(name, tensor.detach());
    for (auto& [name, tensor] : named_buffers()) out.emplace(name, tensor.detach());
    return out;
  }

  /// Copies `dict` into the module. Every name and shape is checked before any value changes;
  /// on error (IoError listing missing keys, unexpected keys when strict, and
  /// "size mismatch for NAME: checkpoint [..] vs model [..]") the module is unchanged.
  void load_state_dict(const StateDict<T>& dict, bool strict = true) {
    NamedTensors<T> own = named_parameters();
    for (auto& entry : named_buffers()) own.push_back(entry);
    std::vector<std::string> missing, unexpected, mismatched;
    std::map<std::string, const Tensor<T>*> own_by_name;
    for (auto& [name, tensor] : own) own_by_name.emplace(name, &tensor);
    for (auto& [name, tensor] : own) {
      auto found = dict.find(name);
      if (found == dict.end()) {
        missing.push_back(name);
      } else if (!found->second.defined() || found->second.shape() != tensor.shape()) {
        mismatched.push_back("size mismatch for " + name + ": checkpoint " +
                             (found->second.defined() ? to_string(found->second.shape()) : std::string("undefined")) +
                             " vs model " + to_string(tensor.shape()));
      }
    }
    for (auto& [name, tensor] : dict)
      if (!own_by_name.count(name)) unexpected.push_back(name);
    const bool failed = !mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()));
    if (failed) {
      std::ostringstream message;
      message << "load_state_dict: the state dict does not fit the model; nothing was loaded.";
      const auto list = [&](const char* title, const std::vector<std::string>& names) {
        if (names.empty()) return;
        message << "\n  " << title << ": ";
        for (std::size_t i = 0; i < names.size(); ++i) message << (i ? ", " : "") << names[i];
      };
      if (strict) list("missing keys", missing);
      if (strict) list("unexpected keys", unexpected);
      for (const auto& line : mismatched) message << "\n  " << line;
      throw IoError(message.str());
    }
    NoGradGuard no_grad;
    for (auto& [name, tensor] : own) {
      auto found = dict.find(name);
      if (found != dict.end()) veil::detail::copy_into(tensor.detach(), found->second);
    }
  }

  /// Training mode (dropout active) for this module and every descendant.
  void train(bool on = true) {
    training_ = on;
    for (auto& [name, child] : children_) child->train(on);
  }
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Drops the accumulated gradient of every parameter.
  void zero_grad() {
    for (auto& [name, tensor] : named_parameters()) tensor.zero_grad();
  }

  /// Number of parameter elements.
  Index num_parameters() const {
    Index count = 0;
    for (auto& [name, tensor] : named_parameters()) count += tensor.numel();
    return count;
  }

 private:
  void check_new_name(const std::string& name) const {
    VEIL_CHECK(!name.empty() && name.find('.') == std::string::npos, ValueError,
               "register: names must be non-empty and contain no '.', got '", name, "'");
    bool taken = false;
    for (auto& entry : parameters_) taken |= entry.first == name;
    for (auto& entry : buffers_) taken |= entry.first == name;
    for (auto& entry : children_) taken |= entry.first == name;
    VEIL_CHECK(!taken, ValueError, "register: the name '", name, "' is already registered in this module");
  }

  void collect(NamedTensors<T>& out, const std::string& prefix, bool buffers) const {
    for (auto& [name, tensor] : buffers ? buffers_ : parameters_) out.emplace_back(prefix + name, tensor);
    for (auto& [name, child] : children_) child->collect(out, prefix + name + ".", buffers);
  }

  NamedTensors<T> parameters_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace veil::nn

// Optimizer: the base of SGD and AdamW. It owns parameter groups (named parameters plus that
// group's options, e.g. weight_decay = 0 for biases and LayerNorm gains), the per-parameter state
// (moment buffers, step counts), zero_grad(), learning-rate access for schedules, and the state
// dict used to save and resume training.
//
// Contracts (PyTorch's torch.optim where it has one):
// - step() runs under NoGradGuard and writes every parameter in place, so the handles a module
//   keeps stay valid. A parameter whose grad is undefined is skipped (no update, no state change).
// - step() is all-or-nothing: every gradient is checked (defined ⇒ same shape as its parameter)
//   before any parameter or state changes.
// - state_dict() is a snapshot (copies): later steps do not change it. Keys:
//     "param_groups.<g>.lr"          0-d, the group's current learning rate
//     "state.<param name>.<buffer>"  like the parameter: "exp_avg", "momentum_buffer", ...
//     "state.<param name>.step"      0-d, steps taken by that parameter (optimizers that count)
//   A parameter that has no state yet (no step has seen its gradient) has no "state." entries.
//   Other hyperparameters (betas, eps, weight_decay, momentum, ...) are not saved: the code that
//   constructs the optimizer is their source of truth, so a resumed run uses what it was built with.
// - load_state_dict() checks every key, shape and value first and throws veil::IoError listing
//   all problems; on error nothing changes. It copies the values (the dict may be reused).
//
// State dicts hold Tensor<T>, so for T = float the lr is saved rounded to float and steps are
// exact up to 2^24. On load, a saved lr equal to the group's current lr rounded to T keeps the
// current (double) value: resuming with the optimizer built from the same options is bit-identical.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "veil/nn/module.hpp"

namespace veil::optim {

/// Parameters that share options. `parameters` are named (model.named_parameters() or a subset)
/// because the state dict refers to each parameter by its name.
template <class T, class Options>
struct ParamGroup {
  nn::NamedTensors<T> parameters;
  Options options;
};

/// nanoGPT's split (configure_optimizers): tensors with dim >= 2 (matmul weights, embeddings)
/// form group 0 with `options`; the rest (biases, LayerNorm gains and biases) form group 1 with
/// weight_decay = 0. Either group may be empty.
template <class T, class Options>
std::vector<ParamGroup<T, Options>> weight_decay_groups(const nn::NamedTensors<T>& parameters, const Options& options) {
  ParamGroup<T, Options> decay{{}, options}, no_decay{{}, options};
  no_decay.options.weight_decay = 0.0;
  for (const auto& entry : parameters) (entry.second.dim() >= 2 ? decay : no_decay).parameters.push_back(entry);
  return {decay, no_decay};
}

/// What a training loop needs from any optimizer.
template <class T>
class Optimizer {
 public:
  Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  virtual ~Optimizer() = default;

  /// One update of every parameter that has a gradient.
  virtual void step() = 0;
  /// Drops every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  virtual void zero_grad() = 0;

  virtual Index num_param_groups() const = 0;
  /// Learning rate of `group`.
  virtual double lr(Index group = 0) const = 0;
  /// Sets the learning rate of one group (e.g. from a schedule, see lr_schedule.hpp).
  virtual void set_lr(Index group, double lr) = 0;
  /// Sets the learning rate of every group.
  void set_lr(double lr) {
    for (Index group = 0; group < num_param_groups(); ++group) set_lr(group, lr);
  }

  virtual nn::StateDict<T> state_dict() const = 0;
  virtual void load_state_dict(const nn::StateDict<T>& dict) = 0;
};

namespace detail {

/// Checks a hyperparameter that must be finite and >= 0 (learning rates, eps, weight decay).
inline void check_non_negative(const char* optimizer, const char* name, double value) {
  VEIL_CHECK(std::isfinite(value) && value >= 0.0, ValueError, optimizer, ": ", name,
             " must be finite and >= 0, got ", value);
}

/// Checks a coefficient that must lie in [0, 1) (Adam's betas: beta = 1 never forgets and the
/// bias correction 1 - beta^t divides by zero).
inline void check_unit_interval(const char* optimizer, const char* name, double value) {
  VEIL_CHECK(value >= 0.0 && value < 1.0, ValueError, optimizer, ": ", name, " must be in [0, 1), got ", value);
}

}  // namespace detail

/// The machinery shared by optimizers whose groups carry an `Options` struct with a `double lr`.
/// A derived optimizer declares its per-parameter buffers and implements `update`; this class
/// does validation, state bookkeeping, the state dict and the all-or-nothing step.
template <class T, class Options>
class OptimizerBase : public Optimizer<T> {
 public:
  using Group = ParamGroup<T, Options>;

  Index num_param_groups() const override { return static_cast<Index>(groups_.size()); }
  double lr(Index group = 0) const override { return groups_[checked_group(group, "lr")].options.lr; }
  void set_lr(Index group, double lr) override {
    const std::size_t g = checked_group(group, "set_lr");
    VEIL_CHECK(std::isfinite(lr) && lr >= 0.0, ValueError, name_, ": set_lr: lr must be finite and >= 0, got ", lr);
    groups_[g].options.lr = lr;
  }
  using Optimizer<T>::set_lr;

  /// The options of `group`.
  const Options& options(Index group = 0) const { return groups_[checked_group(group, "options")].options; }
  /// The parameters of `group`, with their names.
  nn::NamedTensors<T> parameters(Index group = 0) const {
    nn::NamedTensors<T> out;
    for (const auto& slot : groups_[checked_group(group, "parameters")].slots) out.emplace_back(slot.name, slot.parameter);
    return out;
  }

  /// Adds a group. Its parameters must be defined, contiguous leaves with names unique across
  /// the optimizer. A tensor listed twice in one group under different names (tied weights, e.g.
  /// a shared embedding and output projection, which Module::named_parameters lists under both
  /// names) is kept once, under its first name, like PyTorch's named_parameters(); a tensor in
  /// two groups is an error (which group's options would apply?), as in torch.optim.
  void add_param_group(const Group& group) {
    validate_options(group.options);
    // Same data = same storage, offset and shape: also catches two handles of one parameter.
    using Identity = std::tuple<const void*, Index, Shape>;
    const auto identity = [](const Tensor<T>& t) { return Identity{t.storage().get(), t.offset(), t.shape()}; };
    std::set<std::string> names;
    std::map<Identity, std::string> earlier_groups, this_group;
    for (const auto& existing : groups_)
      for (const auto& slot : existing.slots) {
        names.insert(slot.name);
        earlier_groups.emplace(identity(slot.parameter), slot.name);
      }
    GroupState state{group.options, {}};
    for (const auto& [name, parameter] : group.parameters) {
      VEIL_CHECK(parameter.defined(), ValueError, name_, ": parameter '", name, "' is an undefined tensor");
      VEIL_CHECK(parameter.is_leaf(), ValueError, name_, ": parameter '", name,
                 "' must be a leaf tensor (computed by an op; optimise the leaf it came from)");
      VEIL_CHECK(parameter.is_contiguous(), ValueError, name_, ": parameter '", name,
                 "' must be contiguous, got shape ", to_string(parameter.shape()), " with strides ",
                 to_string(parameter.strides()));
      VEIL_CHECK(names.insert(name).second, ValueError, name_, ": parameter name '", name,
                 "' appears twice; names key the state dict and must be unique");
      const auto earlier = earlier_groups.find(identity(parameter));
      VEIL_CHECK(earlier == earlier_groups.end(), ValueError, name_, ": parameter '", name,
                 "' is the same tensor as '", earlier == earlier_groups.end() ? std::string() : earlier->second,
                 "' of an earlier group; a parameter can be in one group only");
      if (!this_group.emplace(identity(parameter), name).second) continue;  // tied: keep the first name
      state.slots.push_back(Slot{name, parameter, {}});
    }
    groups_.push_back(std::move(state));
  }

  void zero_grad() override {
    for (auto& group : groups_)
      for (auto& slot : group.slots) slot.parameter.zero_grad();
  }

  void step() override {
    // Validate every gradient before touching anything: a step is all-or-nothing.
    struct Work {
      std::size_t group;
      std::size_t slot;
      Tensor<T> grad;
    };
    std::vector<Work> work;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      for (std::size_t s = 0; s < groups_[g].slots.size(); ++s) {
        const Slot& slot = groups_[g].slots[s];
        Tensor<T> grad = slot.parameter.grad();
        if (!grad.defined()) continue;  // PyTorch: parameters without a gradient are skipped
        VEIL_CHECK(grad.shape() == slot.parameter.shape(), ShapeError, name_, ": step: the gradient of '", slot.name,
                   "' has shape ", to_string(grad.shape()), ", expected the parameter's shape ",
                   to_string(slot.parameter.shape()));
        if (!grad.is_contiguous()) grad = veil::detail::copy_contiguous(grad);
        work.push_back(Work{g, s, grad});
      }
    }
    // Allocate missing state up front, so nothing can fail (bad_alloc aside) once updates begin.
    std::vector<ParameterState> fresh(work.size());
    for (std::size_t i = 0; i < work.size(); ++i) {
      const Slot& slot = groups_[work[i].group].slots[work[i].slot];
      if (!slot.state.initialized) fresh[i] = initial_state(slot.parameter, groups_[work[i].group].options);
    }
    NoGradGuard no_grad;
    for (std::size_t i = 0; i < work.size(); ++i) {
      GroupState& group = groups_[work[i].group];
      Slot& slot = group.slots[work[i].slot];
      const bool first = !slot.state.initialized;
      if (first) {
        slot.state = std::move(fresh[i]);
        slot.state.initialized = true;
      }
      if (counts_steps()) ++slot.state.step;
      update(slot.parameter, work[i].grad, slot.state, group.options, first);
    }
  }

  nn::StateDict<T> state_dict() const override {
    nn::StateDict<T> out;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      out.emplace(group_lr_key(g), scalar<T>(static_cast<T>(groups_[g].options.lr)));
      for (const auto& slot : groups_[g].slots) {
        if (!slot.state.initialized) continue;
        const auto names = buffer_names(groups_[g].options);
        for (std::size_t b = 0; b < names.size(); ++b)
          out.emplace(state_key(slot.name, names[b]), veil::detail::copy_contiguous(slot.state.buffers[b]));
        if (counts_steps()) {
          VEIL_CHECK(static_cast<Index>(static_cast<T>(slot.state.step)) == slot.state.step, ValueError, name_,
                     ": state_dict: the step count ", slot.state.step, " of '", slot.name,
                     "' is not exactly representable in the state dict's element type");
          out.emplace(state_key(slot.name, "step"), scalar<T>(static_cast<T>(slot.state.step)));
        }
      }
    }
    return out;
  }

  void load_state_dict(const nn::StateDict<T>& dict) override {
    std::vector<std::string> missing, unexpected, problems;
    // Which keys this optimizer could hold: each group's lr, each parameter's fields.
    struct Field {
      std::size_t group, slot;
      std::string field;  // a buffer name or "step"
    };
    std::map<std::string, Field> known;
    std::map<std::pair<std::size_t, std::size_t>, std::size_t> present;  // parameter -> fields found
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      if (!dict.count(group_lr_key(g))) missing.push_back(group_lr_key(g));
      for (std::size_t s = 0; s < groups_[g].slots.size(); ++s)
        for (const auto& field : fields(groups_[g].options))
          known.emplace(state_key(groups_[g].slots[s].name, field), Field{g, s, field});
    }
    for (const auto& [key, tensor] : dict) {
      const auto found = known.find(key);
      const bool is_lr = is_group_lr_key(key);
      if (found == known.end() && !is_lr) {
        unexpected.push_back(key);
        continue;
      }
      if (!tensor.defined()) {
        problems.push_back("undefined tensor for " + key);
        continue;
      }
      if (is_lr) {
        if (!tensor.shape().empty())
          problems.push_back("size mismatch for " + key + ": checkpoint " + to_string(tensor.shape()) +
                             " vs optimizer [] (0-d)");
        else if (!(std::isfinite(static_cast<double>(tensor.item())) && tensor.item() >= T(0)))
          problems.push_back("bad value for " + key + ": expected a finite lr >= 0, got " + number(tensor.item()));
        continue;
      }
      const Field& field = found->second;
      ++present[{field.group, field.slot}];
      const Slot& slot = groups_[field.group].slots[field.slot];
      if (field.field == "step") {
        if (!tensor.shape().empty()) {
          problems.push_back("size mismatch for " + key + ": checkpoint " + to_string(tensor.shape()) +
                             " vs optimizer [] (0-d)");
        } else {
          const double step = static_cast<double>(tensor.item());
          if (!(std::isfinite(step) && step >= 1.0 && std::floor(step) == step && step < 9.0e15))
            problems.push_back("bad value for " + key + ": expected an integer step count >= 1, got " + number(step));
        }
      } else if (tensor.shape() != slot.parameter.shape()) {
        problems.push_back("size mismatch for " + key + ": checkpoint " + to_string(tensor.shape()) +
                           " vs optimizer " + to_string(slot.parameter.shape()));
      }
    }
    // A parameter's state is all of its fields or none of them.
    for (const auto& [where, count] : present) {
      const auto& group = groups_[where.first];
      const auto all = fields(group.options);
      if (count == all.size()) continue;
      for (const auto& field : all) {
        const std::string key = state_key(group.slots[where.second].name, field);
        if (!dict.count(key)) missing.push_back(key);
      }
    }
    if (!missing.empty() || !unexpected.empty() || !problems.empty()) {
      std::ostringstream message;
      message << name_ << ": load_state_dict: the state dict does not fit this optimizer; nothing was loaded.";
      const auto list = [&](const char* title, const std::vector<std::string>& keys) {
        if (keys.empty()) return;
        message << "\n  " << title << ": ";
        for (std::size_t i = 0; i < keys.size(); ++i) message << (i ? ", " : "") << keys[i];
      };
      list("missing keys", missing);
      list("unexpected keys", unexpected);
      for (const auto& line : problems) message << "\n  " << line;
      throw IoError(message.str());
    }
    // Build the whole new state aside, then commit with moves that cannot fail.
    std::vector<std::vector<ParameterState>> loaded(groups_.size());
    std::vector<double> lrs(groups_.size());
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const T saved_lr = dict.at(group_lr_key(g)).item();
      const double current = groups_[g].options.lr;
      lrs[g] = static_cast<T>(current) == saved_lr ? current : static_cast<double>(saved_lr);
      const auto names = buffer_names(groups_[g].options);
      loaded[g].resize(groups_[g].slots.size());
      for (std::size_t s = 0; s < groups_[g].slots.size(); ++s) {
        if (!present.count({g, s})) continue;
        ParameterState& state = loaded[g][s];
        state.initialized = true;
        for (const auto& buffer : names)
          state.buffers.push_back(veil::detail::copy_contiguous(dict.at(state_key(groups_[g].slots[s].name, buffer))));
        if (counts_steps())
          state.step = static_cast<Index>(dict.at(state_key(groups_[g].slots[s].name, "step")).item());
      }
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      groups_[g].options.lr = lrs[g];
      for (std::size_t s = 0; s < groups_[g].slots.size(); ++s) groups_[g].slots[s].state = std::move(loaded[g][s]);
    }
  }

 protected:
  /// Per-parameter state. `initialized` turns true at the first step that sees a gradient.
  struct ParameterState {
    bool initialized = false;
    Index step = 0;                  // steps taken, when counts_steps()
    std::vector<Tensor<T>> buffers;  // one per buffer_names(options), each like the parameter, contiguous
  };

  explicit OptimizerBase(const char* name) : name_(name) {}

  /// Throws ValueError when an option is out of range.
  virtual void validate_options(const Options& options) const = 0;
  /// Names of the per-parameter buffers under `options` ("exp_avg", ...), in a fixed order.
  virtual std::vector<std::string> buffer_names(const Options& options) const = 0;
  /// Whether the state holds a step count (Adam's bias correction needs one, SGD does not).
  virtual bool counts_steps() const = 0;
  /// One update of `parameter` (contiguous) given `grad` (contiguous, same shape). The step count
  /// is already incremented; `first` is true when `state` was just created (its buffers are zero).
  virtual void update(const Tensor<T>& parameter, const Tensor<T>& grad, ParameterState& state,
                      const Options& options, bool first) = 0;

  const char* optimizer_name() const { return name_; }

 private:
  struct Slot {
    std::string name;
    Tensor<T> parameter;
    ParameterState state;
  };
  struct GroupState {
    Options options;
    std::vector<Slot> slots;
  };

  std::size_t checked_group(Index group, const char* what) const {
    VEIL_CHECK(group >= 0 && group < num_param_groups(), ValueError, name_, ": ", what, ": group must be in [0, ",
               num_param_groups(), "), got ", group);
    return static_cast<std::size_t>(group);
  }

  ParameterState initial_state(const Tensor<T>& parameter, const Options& options) const {
    ParameterState state;
    for (std::size_t b = 0; b < buffer_names(options).size(); ++b) state.buffers.push_back(zeros<T>(parameter.shape()));
    return state;
  }

  std::vector<std::string> fields(const Options& options) const {
    auto out = buffer_names(options);
    if (counts_steps()) out.push_back("step");
    return out;
  }

  static std::string group_lr_key(std::size_t group) { return "param_groups." + std::to_string(group) + ".lr"; }
  bool is_group_lr_key(const std::string& key) const {
    for (std::size_t g = 0; g < groups_.size(); ++g)
      if (key == group_lr_key(g)) return true;
    return false;
  }
  static std::string state_key(const std::string& parameter, const std::string& field) {
    return "state." + parameter + "." + field;
  }
  template <class Number>
  static std::string number(Number value) {
    std::ostringstream out;
    out << value;
    return out.str();
  }

  const char* name_;
  std::vector<GroupState> groups_;
};

}  // namespace veil::optim

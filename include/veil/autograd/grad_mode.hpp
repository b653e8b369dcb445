// Whether ops record history. A thread-local switch: NoGradGuard in one thread leaves others alone.
#pragma once

namespace veil {

namespace detail {
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

/// True when ops on the calling thread record autograd history.
inline bool is_grad_enabled() { return detail::grad_mode_flag(); }

/// Disables history recording on this thread for the guard's lifetime (inference, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(detail::grad_mode_flag()) { detail::grad_mode_flag() = false; }
  ~NoGradGuard() { detail::grad_mode_flag() = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

/// Sets history recording on this thread to `enabled` for the guard's lifetime (gradcheck
/// re-enables it so it works when called under a NoGradGuard).
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled) : previous_(detail::grad_mode_flag()) { detail::grad_mode_flag() = enabled; }
  ~GradModeGuard() { detail::grad_mode_flag() = previous_; }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace veil

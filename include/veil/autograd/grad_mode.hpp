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

}  // namespace veil

// Helpers for the [threads] tests: std::threads that start together, and a scoped intra-op thread
// count. Catch2's assertion macros are not thread-safe, so thread bodies only record results and
// the test asserts on them after join(); an exception escaping a body is rethrown there as well.
//
// CI runs the [threads] tests under ThreadSanitizer with OMP_NUM_THREADS=1. GCC's OpenMP runtime
// is not instrumented, so TSan cannot see the synchronisation inside an OpenMP region and would
// report races that are not there; with one intra-op thread veil never opens a region, and what
// TSan checks is exactly the sharing between the tests' std::threads. A [threads] test must
// therefore never raise the thread count above 1 (ThreadCountScope(1) in each thread).
#pragma once

#include <atomic>
#include <exception>
#include <thread>
#include <vector>

#include <veil/core.hpp>

namespace veil_test {

/// Starts `count` threads that run body(t), t in [0, count), after all of them have been created
/// (a spinning start barrier: the bodies overlap instead of running one after the other as each
/// thread is spawned), joins them, then rethrows the exception of the lowest t that threw.
template <class Body>
void run_together(int count, Body body) {
  std::atomic<int> ready{0};
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(count));
  for (int t = 0; t < count; ++t)
    threads.emplace_back([&, t] {
      ++ready;
      while (ready.load() < count) std::this_thread::yield();
      try {
        body(t);
      } catch (...) {
        errors[static_cast<std::size_t>(t)] = std::current_exception();
      }
    });
  for (auto& thread : threads) thread.join();
  for (const auto& error : errors)
    if (error) std::rethrow_exception(error);
}

/// Sets the calling thread's veil thread count and restores it on scope exit.
class ThreadCountScope {
 public:
  explicit ThreadCountScope(int count) { veil::set_num_threads(count); }
  ThreadCountScope(const ThreadCountScope&) = delete;
  ThreadCountScope& operator=(const ThreadCountScope&) = delete;
  ~ThreadCountScope() { veil::set_num_threads(saved_); }

 private:
  int saved_ = veil::num_threads();
};

}  // namespace veil_test

// The only file that spells `#pragma omp`. Everything parallel in veil goes through parallel_for,
// whose partition depends only on (first, last, grain) and the thread count; kernels that reduce
// across iterations use fixed chunks (see ops/reduce.hpp), so results do not depend on the
// number of threads beyond rounding.
//
// The thread count is per calling thread (OpenMP's nthreads-var lives in each thread's data
// environment): a program may run several std::threads, each with its own count. With a count of
// 1 no OpenMP region is ever opened, so such threads share nothing through the OpenMP runtime.
#pragma once

#include <algorithm>
#include <exception>
#include <mutex>

#include "veil/core/types.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace veil {

/// Number of threads veil's parallel loops and Eigen's GEMM use when called from this thread.
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the thread count of veil's loops and Eigen's GEMM for calls from this thread; other
/// threads keep theirs, and a thread started later begins from OMP_NUM_THREADS (default: the
/// number of cores). Eigen's GEMM follows it without being told: with no Eigen::setNbThreads
/// override, Eigen::nbThreads() is omp_get_max_threads() of the calling thread. Calling
/// Eigen::setNbThreads here would instead write one process-wide variable, a data race as soon
/// as two threads choose their counts.
inline void set_num_threads(int count) {
  count = std::max(count, 1);
#ifdef _OPENMP
  omp_set_num_threads(count);
#else
  (void)count;
#endif
}

/// Index of the calling thread inside a parallel region (0 outside).
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// True inside a veil/OpenMP parallel region: nested work then runs serially.
inline bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

/// Calls fn(begin, end) on disjoint chunks covering [first, last). Runs serially when the range
/// has at most `grain` iterations or when already inside a parallel region. An exception thrown
/// by fn is rethrown on the calling thread after the loop.
template <class Fn>
void parallel_for(Index first, Index last, Index grain, Fn&& fn) {
  const Index count = last - first;
  if (count <= 0) return;
  grain = std::max<Index>(grain, 1);  // a grain below 1 would give zero or negative chunks
  const int threads = num_threads();
  if (count <= grain || threads <= 1 || in_parallel_region()) {
    fn(first, last);
    return;
  }
  const Index chunks = std::min<Index>(threads, count / grain + (count % grain != 0));
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for num_threads(static_cast<int>(chunks)) schedule(static, 1)
  for (Index chunk = 0; chunk < chunks; ++chunk) {
    const Index begin = first + count * chunk / chunks;
    const Index end = first + count * (chunk + 1) / chunks;
    try {
      fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

/// Calls fn(item) for every item in [0, count), handing items to threads one at a time as they
/// free up. For work items of uneven cost (attention tiles under causal or document masks).
/// With more than one thread it always opens a parallel region, even for a single item, so
/// Eigen products inside fn run serially (Eigen only parallelises outside an active region).
template <class Fn>
void parallel_for_dynamic(Index count, Fn&& fn) {
  if (count <= 0) return;
  if (num_threads() <= 1 || in_parallel_region()) {
    for (Index item = 0; item < count; ++item) fn(item);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic, 1)
  for (Index item = 0; item < count; ++item) {
    try {
      fn(item);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace veil

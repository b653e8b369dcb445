#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <Eigen/Core>

#include "support/threads.hpp"

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using veil_test::ThreadCountScope;

namespace {

struct CustomError : std::runtime_error {
  explicit CustomError(int code) : std::runtime_error("custom"), code(code) {}
  int code;
};

/// Visits of each index in [first, last) by parallel_for(first, last, grain); every entry must be 1.
std::vector<int> visits(veil::Index first, veil::Index last, veil::Index grain) {
  const veil::Index count = last > first ? last - first : 0;
  std::vector<std::atomic<int>> seen(static_cast<std::size_t>(count));
  std::atomic<int> out_of_range{0};
  veil::parallel_for(first, last, grain, [&](veil::Index begin, veil::Index end) {
    if (begin < first || end > last || begin >= end) ++out_of_range;
    for (veil::Index i = begin; i < end; ++i)
      if (i >= first && i < last) ++seen[static_cast<std::size_t>(i - first)];
  });
  std::vector<int> out;
  for (auto& s : seen) out.push_back(s.load());
  if (out_of_range.load() != 0) out.push_back(-1);  // makes the comparison fail
  return out;
}

}  // namespace

TEST_CASE("parallel_for visits every index exactly once for many ranges and grains", "[core][parallel]") {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadCountScope scope(threads);
    for (veil::Index first : {veil::Index{0}, veil::Index{5}, veil::Index{-17}}) {
      for (veil::Index count : {0, 1, 2, 3, 7, 8, 64, 100, 1000, 4097}) {
        for (veil::Index grain : {-3, 0, 1, 2, 3, 16, 999, 1000, 1001, 1 << 20}) {
          INFO("threads " << threads << ", first " << first << ", count " << count << ", grain " << grain);
          CHECK(visits(first, first + count, grain) == std::vector<int>(static_cast<std::size_t>(count), 1));
        }
      }
    }
  }
}

TEST_CASE("parallel_for with an empty or reversed range never calls the function", "[core][parallel]") {
  ThreadCountScope scope(4);
  int calls = 0;
  veil::parallel_for(10, 10, 1, [&](veil::Index, veil::Index) { ++calls; });
  veil::parallel_for(10, 3, 1, [&](veil::Index, veil::Index) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("parallel_for splits a large range into several chunks when threads are available", "[core][parallel]") {
  ThreadCountScope scope(4);
  std::atomic<int> chunks{0};
  veil::parallel_for(0, 1000, 10, [&](veil::Index, veil::Index) { ++chunks; });
  CHECK(chunks.load() == 4);
  chunks = 0;
  veil::parallel_for(0, 1000, 1000, [&](veil::Index begin, veil::Index end) {
    ++chunks;
    CHECK(begin == 0);
    CHECK(end == 1000);
  });
  CHECK(chunks.load() == 1);
}

TEST_CASE("parallel_for rethrows an exception thrown inside as the same type", "[core][parallel]") {
  for (int threads : {1, 4}) {
    ThreadCountScope scope(threads);
    INFO("threads " << threads);
    // Thrown from the last chunk only, so with several threads it comes from a worker.
    try {
      veil::parallel_for(0, 1000, 1, [](veil::Index, veil::Index end) {
        if (end == 1000) throw CustomError(42);
      });
      FAIL("no exception");
    } catch (const CustomError& e) {
      CHECK(e.code == 42);
    }
    CHECK_THROWS_AS(veil::parallel_for(0, 1000, 1,
                                       [](veil::Index, veil::Index) { throw veil::ShapeError("from every chunk"); }),
                    veil::ShapeError);
    CHECK_THROWS_WITH(veil::parallel_for(0, 1000, 1,
                                         [](veil::Index, veil::Index) { throw veil::ShapeError("from every chunk"); }),
                      "from every chunk");
  }
}

TEST_CASE("parallel_for_dynamic visits every item exactly once", "[core][parallel]") {
  for (int threads : {1, 2, 4}) {
    ThreadCountScope scope(threads);
    for (veil::Index count : {0, 1, 2, 3, 17, 1000}) {
      INFO("threads " << threads << ", count " << count);
      std::vector<std::atomic<int>> seen(static_cast<std::size_t>(count));
      std::atomic<int> out_of_range{0};
      veil::parallel_for_dynamic(count, [&](veil::Index item) {
        if (item < 0 || item >= count) ++out_of_range;
        else ++seen[static_cast<std::size_t>(item)];
      });
      CHECK(out_of_range.load() == 0);
      std::vector<int> got;
      for (auto& s : seen) got.push_back(s.load());
      CHECK(got == std::vector<int>(static_cast<std::size_t>(count), 1));
    }
  }
  int calls = 0;
  veil::parallel_for_dynamic(-5, [&](veil::Index) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("parallel_for_dynamic rethrows an exception thrown by one item as the same type", "[core][parallel]") {
  for (int threads : {1, 4}) {
    ThreadCountScope scope(threads);
    INFO("threads " << threads);
    try {
      veil::parallel_for_dynamic(100, [](veil::Index item) {
        if (item == 77) throw CustomError(static_cast<int>(item));
      });
      FAIL("no exception");
    } catch (const CustomError& e) {
      CHECK(e.code == 77);
    }
    CHECK_THROWS_AS(veil::parallel_for_dynamic(100, [](veil::Index) { throw veil::MaskError("bad"); }),
                    veil::MaskError);
  }
}

TEST_CASE("nested parallel_for inside a parallel region runs serially and still covers its range",
          "[core][parallel]") {
  ThreadCountScope scope(4);
  std::vector<std::atomic<int>> seen(40 * 50);
  std::atomic<int> nested_not_serial{0};
  veil::parallel_for(0, 40, 1, [&](veil::Index begin, veil::Index end) {
    for (veil::Index outer = begin; outer < end; ++outer) {
      int calls = 0;
      veil::parallel_for(0, 50, 1, [&](veil::Index b, veil::Index e) {
        ++calls;
        for (veil::Index inner = b; inner < e; ++inner) ++seen[static_cast<std::size_t>(outer * 50 + inner)];
      });
      if (veil::in_parallel_region() && calls != 1) ++nested_not_serial;
    }
  });
  CHECK(nested_not_serial.load() == 0);
  std::vector<int> got;
  for (auto& s : seen) got.push_back(s.load());
  CHECK(got == std::vector<int>(40 * 50, 1));
}

TEST_CASE("set_num_threads and num_threads round trip and counts below 1 become 1", "[core][parallel]") {
  const int saved = veil::num_threads();
  veil::set_num_threads(3);
  CHECK(veil::num_threads() == 3);
  veil::set_num_threads(1);
  CHECK(veil::num_threads() == 1);
  veil::set_num_threads(0);
  CHECK(veil::num_threads() == 1);
  veil::set_num_threads(-4);
  CHECK(veil::num_threads() == 1);
  veil::set_num_threads(saved);
  CHECK(veil::num_threads() == saved);
  CHECK(veil::thread_index() == 0);
  CHECK_FALSE(veil::in_parallel_region());
}

TEST_CASE("the thread count is per thread and Eigen's GEMM follows the calling thread's count",
          "[core][parallel][threads]") {
  constexpr int threads = 10;
  const ThreadCountScope main_count(3);
  // Per thread: the count read back after choosing t + 1, and Eigen's view of it.
  std::vector<int> seen(threads, 0), eigen_seen(threads, 0);
  veil_test::run_together(threads, [&](int t) {
    veil::set_num_threads(t + 1);
    std::this_thread::yield();  // let the other threads choose theirs in between
    seen[static_cast<std::size_t>(t)] = veil::num_threads();
    eigen_seen[static_cast<std::size_t>(t)] = Eigen::nbThreads();
  });
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(seen[static_cast<std::size_t>(t)] == t + 1);
    CHECK(eigen_seen[static_cast<std::size_t>(t)] == t + 1);
  }
  CHECK(veil::num_threads() == 3);
  CHECK(Eigen::nbThreads() == 3);
}

#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include "support/threads.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

using veil::Index;
using veil::Storage;

namespace {

constexpr std::size_t mib = std::size_t{1} << 20;
constexpr Index floats_per_mib = static_cast<Index>(mib / sizeof(float));

// Each test starts from an empty cache with a known limit and leaves the process as it found it.
struct CacheScope {
  std::size_t saved = veil::storage_cache_limit();
  explicit CacheScope(std::size_t limit) {
    veil::release_cached_storage();
    veil::set_storage_cache_limit(limit);
  }
  ~CacheScope() {
    veil::release_cached_storage();
    veil::set_storage_cache_limit(saved);
  }
};

float* data_of_fresh(Index size) { return Storage<float>(size).data(); }  // freed on return

}  // namespace

TEST_CASE("a freed large storage is handed to the next storage of the same size", "[tensor][storage_cache]") {
  const CacheScope scope(64 * mib);
  float* const first = data_of_fresh(4 * floats_per_mib);
  CHECK(veil::cached_storage_bytes() == 4 * mib);
  const Storage<float> second(4 * floats_per_mib);
  CHECK(second.data() == first);
  CHECK(veil::cached_storage_bytes() == 0);
}

TEST_CASE("a cached block serves a smaller request only when it is at most an eighth larger",
          "[tensor][storage_cache]") {
  const CacheScope scope(64 * mib);
  float* const block = data_of_fresh(8 * floats_per_mib);
  {
    const Storage<float> much_smaller(6 * floats_per_mib);  // 8 MiB > 6 MiB · 9/8
    CHECK(much_smaller.data() != block);
    CHECK(veil::cached_storage_bytes() == 8 * mib);
  }
  veil::release_cached_storage();
  float* const again = data_of_fresh(8 * floats_per_mib);
  const Storage<float> slightly_smaller(8 * floats_per_mib - floats_per_mib / 2);  // 7.5 MiB
  CHECK(slightly_smaller.data() == again);
}

TEST_CASE("storage below a mebibyte never enters the cache", "[tensor][storage_cache]") {
  const CacheScope scope(64 * mib);
  { const Storage<float> small(floats_per_mib - 1); }
  { const Storage<double> smaller(1000); }
  CHECK(veil::cached_storage_bytes() == 0);
}

TEST_CASE("the cache stays within its limit by freeing the blocks cached longest ago", "[tensor][storage_cache]") {
  const CacheScope scope(10 * mib);
  std::vector<float*> freed;
  {
    std::vector<std::unique_ptr<Storage<float>>> live;
    for (int i = 0; i < 3; ++i) live.push_back(std::make_unique<Storage<float>>(4 * floats_per_mib));
    for (const auto& storage : live) freed.push_back(storage->data());
  }  // destroyed in order: blocks 0, 1, 2; block 0 no longer fits under 10 MiB
  CHECK(veil::cached_storage_bytes() == 8 * mib);
  const Storage<float> a(4 * floats_per_mib), b(4 * floats_per_mib);
  const bool got_the_newest = (a.data() == freed[1] && b.data() == freed[2]) || (a.data() == freed[2] && b.data() == freed[1]);
  CHECK(got_the_newest);
  CHECK(veil::cached_storage_bytes() == 0);

  SECTION("lowering the limit frees blocks at once") {
    { const Storage<float> c(4 * floats_per_mib); }
    CHECK(veil::cached_storage_bytes() == 4 * mib);
    veil::set_storage_cache_limit(2 * mib);
    CHECK(veil::storage_cache_limit() == 2 * mib);
    CHECK(veil::cached_storage_bytes() == 0);
  }
}

TEST_CASE("a cache limit of zero turns caching off and release empties the cache", "[tensor][storage_cache]") {
  const CacheScope scope(0);
  { const Storage<float> large(4 * floats_per_mib); }
  CHECK(veil::cached_storage_bytes() == 0);
  veil::set_storage_cache_limit(64 * mib);
  { const Storage<float> large(4 * floats_per_mib); }
  CHECK(veil::cached_storage_bytes() == 4 * mib);
  veil::release_cached_storage();
  CHECK(veil::cached_storage_bytes() == 0);
}

TEST_CASE("tensors built on reused storage compute the same results as on fresh storage", "[tensor][storage_cache]") {
  const CacheScope scope(256 * mib);
  veil::Generator generator(5);
  const auto a = veil::randn<float>({512, 600}, generator), b = veil::randn<float>({600, 700}, generator);
  const auto fresh = veil::matmul(a, b) + 1.0f;       // every large block here is new
  const auto reused = veil::matmul(a, b) + 1.0f;      // the first product's block came back from the cache
  const auto again = veil::matmul(a, b) + 1.0f;
  REQUIRE(fresh.shape() == reused.shape());
  for (Index i = 0; i < fresh.numel(); ++i) {
    REQUIRE(reused.data()[i] == fresh.data()[i]);
    REQUIRE(again.data()[i] == fresh.data()[i]);
  }
}

#ifdef VEIL_DEBUG_NAN_FILL
TEST_CASE("with NaN fill a reused block starts as NaN again", "[tensor][storage_cache]") {
  const CacheScope scope(64 * mib);
  {
    const Storage<float> first(2 * floats_per_mib);
    for (Index i = 0; i < first.size(); ++i) first.data()[i] = 1.0f;
  }
  const Storage<float> second(2 * floats_per_mib);
  REQUIRE(veil::cached_storage_bytes() == 0);  // it was the cached block
  for (Index i = 0; i < second.size(); ++i) REQUIRE(std::isnan(second.data()[i]));
}
#endif

TEST_CASE("threads allocating and freeing large storage concurrently never share a live block",
          "[tensor][storage_cache][threads]") {
  const CacheScope scope(32 * mib);
  constexpr int thread_count = 6, rounds = 60;
  std::vector<int> corrupted(thread_count, 0);
  veil_test::run_together(thread_count, [&](int t) {
    const veil_test::ThreadCountScope threads(1);
    for (int round = 0; round < rounds; ++round) {
      // Sizes of 1-3 MiB so that threads compete for the same cached blocks.
      const Index size = floats_per_mib * (1 + (round + t) % 3) + round;
      Storage<std::int32_t> storage(size);
      const std::int32_t mark = t * 1000 + round;
      for (Index i = 0; i < size; i += 1021) storage.data()[i] = mark;
      std::this_thread::yield();
      for (Index i = 0; i < size; i += 1021) corrupted[static_cast<std::size_t>(t)] += storage.data()[i] != mark;
    }
  });
  for (int t = 0; t < thread_count; ++t) CHECK(corrupted[static_cast<std::size_t>(t)] == 0);
  CHECK(veil::cached_storage_bytes() <= 32 * mib);
}

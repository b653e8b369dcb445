// Generator: an explicit, seeded, counter-based random source. There is no global RNG.
//
// Each draw is a pure function of (seed, counter): value = mix(seed, counter++). A fill of n values
// reserves n consecutive counters and computes them in parallel, so results never depend on the
// thread count. The same mix keyed on (b, h, i, j) gives attention dropout masks that backward
// regenerates instead of storing. The mix is SplitMix64's finaliser (Steele, Lea, Flood 2014).
#pragma once

#include <cmath>
#include <cstdint>

#include "veil/core/types.hpp"

namespace veil {

namespace detail {

inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// Random 64 bits for counter `counter` of stream `seed`.
inline std::uint64_t random_bits(std::uint64_t seed, std::uint64_t counter) {
  return mix64(mix64(seed) ^ (counter * 0xD1B54A32D192ED03ULL));
}

/// Uniform double in [0, 1) from 53 random bits.
inline double bits_to_unit(std::uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

/// For p in [0, 1): bits_to_unit(bits) >= p exactly when (bits >> 11) >= unit_threshold(p). The
/// integer test vectorises; it is exact because p · 2^53 is exact in double.
inline std::uint64_t unit_threshold(double p) { return static_cast<std::uint64_t>(std::ceil(std::ldexp(p, 53))); }

}  // namespace detail

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : seed_(seed) {}

  std::uint64_t seed() const { return seed_; }
  std::uint64_t counter() const { return counter_; }

  /// Reserves `count` consecutive counters and returns the first; draw i of the block is
  /// detail::random_bits(seed(), first + i).
  std::uint64_t reserve(Index count) {
    const std::uint64_t first = counter_;
    counter_ += static_cast<std::uint64_t>(count);
    return first;
  }

  std::uint64_t next_bits() { return detail::random_bits(seed_, counter_++); }
  /// Uniform in [0, 1).
  double uniform() { return detail::bits_to_unit(next_bits()); }

 private:
  std::uint64_t seed_;
  std::uint64_t counter_ = 0;
};

namespace detail {

/// Standard normal from the two counters `counter` and `counter + 1`, both of which the caller
/// must have reserved (Box-Muller; u1 is shifted into (0, 1] so log is finite).
inline double normal_from(std::uint64_t seed, std::uint64_t counter) {
  const double u1 = 1.0 - bits_to_unit(random_bits(seed, counter));
  const double u2 = bits_to_unit(random_bits(seed, counter + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace detail

}  // namespace veil

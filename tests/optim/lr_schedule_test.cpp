// warmup_cosine_lr against hand-computed values of nanoGPT's get_lr at chosen steps.
#include <veil/optim.hpp>

#include "support/message_contains.hpp"

#include <catch2/catch.hpp>

#include <cmath>

using veil::optim::warmup_cosine_lr;
using veil::optim::WarmupCosineOptions;
using veil_test::MessageContains;

TEST_CASE("Warmup cosine schedule matches hand-computed values at chosen steps", "[optim][lr_schedule]") {
  const WarmupCosineOptions schedule{.lr = 6e-4, .min_lr = 6e-5, .warmup_iters = 10, .lr_decay_iters = 110};
  // Warmup: lr · (step + 1) / (warmup_iters + 1).
  CHECK(warmup_cosine_lr(0, schedule) == Approx(6e-4 / 11).epsilon(1e-14));
  CHECK(warmup_cosine_lr(4, schedule) == Approx(6e-4 * 5 / 11).epsilon(1e-14));
  CHECK(warmup_cosine_lr(9, schedule) == Approx(6e-4 * 10 / 11).epsilon(1e-14));
  // Cosine starts at lr: ratio 0, coefficient 1.
  CHECK(warmup_cosine_lr(10, schedule) == Approx(6e-4).epsilon(1e-14));
  // Quarter way: ratio 0.25, coefficient (1 + cos(π/4)) / 2 = 0.853553390593273762...
  CHECK(warmup_cosine_lr(35, schedule) == Approx(6e-5 + 0.8535533905932737622 * 5.4e-4).epsilon(1e-14));
  // Half way: ratio 0.5, coefficient 0.5 → (lr + min_lr) / 2.
  CHECK(warmup_cosine_lr(60, schedule) == Approx(3.3e-4).epsilon(1e-14));
  // End of decay and after it: min_lr.
  CHECK(warmup_cosine_lr(110, schedule) == Approx(6e-5).epsilon(1e-14));
  CHECK(warmup_cosine_lr(111, schedule) == 6e-5);
  CHECK(warmup_cosine_lr(1000000, schedule) == 6e-5);
}

TEST_CASE("Warmup cosine schedule without warmup or without decay span", "[optim][lr_schedule]") {
  CHECK(warmup_cosine_lr(0, {.lr = 1.0, .min_lr = 0.0, .warmup_iters = 0, .lr_decay_iters = 4}) == 1.0);
  CHECK(warmup_cosine_lr(2, {.lr = 1.0, .min_lr = 0.0, .warmup_iters = 0, .lr_decay_iters = 4}) ==
        Approx(0.5).epsilon(1e-15));
  // lr_decay_iters == warmup_iters: warmup, then straight to min_lr (no 0/0).
  CHECK(warmup_cosine_lr(2, {.lr = 1.0, .min_lr = 0.1, .warmup_iters = 3, .lr_decay_iters = 3}) == 0.75);
  CHECK(warmup_cosine_lr(3, {.lr = 1.0, .min_lr = 0.1, .warmup_iters = 3, .lr_decay_iters = 3}) == 0.1);
}

TEST_CASE("Warmup cosine schedule rejects inconsistent settings", "[optim][lr_schedule][errors]") {
  REQUIRE_THROWS_MATCHES(warmup_cosine_lr(-1, {}), veil::ValueError,
                         MessageContains("warmup_cosine_lr: step must be >= 0, got -1"));
  REQUIRE_THROWS_MATCHES(warmup_cosine_lr(0, {.lr = -1.0, .min_lr = 0.0}), veil::ValueError,
                         MessageContains("lr must be finite and >= 0, got -1"));
  REQUIRE_THROWS_MATCHES(warmup_cosine_lr(0, {.lr = 1e-3, .min_lr = 1e-2}), veil::ValueError,
                         MessageContains("min_lr must be in [0, lr = 0.001], got 0.01"));
  REQUIRE_THROWS_MATCHES(warmup_cosine_lr(0, {.warmup_iters = 100, .lr_decay_iters = 50}), veil::ValueError,
                         MessageContains("lr_decay_iters must be >= warmup_iters = 100, got 50"));
}

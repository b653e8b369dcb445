// Learning-rate schedules as plain functions of the step number: the caller computes the rate
// and hands it to the optimizer, as nanoGPT's train.py does every iteration:
//
//   for (Index step = 0; step < max_iters; ++step) {
//     optimizer.set_lr(optim::warmup_cosine_lr(step, schedule));
//     ...forward, backward, optimizer.step()...
//   }
//
// Being stateless, a schedule needs nothing in a checkpoint beyond the step number.
#pragma once

#include <cmath>
#include <numbers>

#include "veil/core/check.hpp"
#include "veil/core/types.hpp"

namespace veil::optim {

/// Linear warmup then cosine decay (Loshchilov & Hutter, SGDR, without restarts). Defaults are
/// nanoGPT's GPT-2 124M run.
struct WarmupCosineOptions {
  double lr = 6e-4;               // peak rate, reached at the end of warmup; >= 0
  double min_lr = 6e-5;           // floor after decay; in [0, lr] (nanoGPT: about lr / 10)
  Index warmup_iters = 2000;      // steps of linear warmup; >= 0
  Index lr_decay_iters = 600000;  // step at which the cosine reaches min_lr; >= warmup_iters
};

/// The learning rate at `step` (0-based), exactly nanoGPT's get_lr(it):
///   step <  warmup_iters:                lr · (step + 1) / (warmup_iters + 1)
///   step >= lr_decay_iters:              min_lr
///   otherwise, with r = (step − warmup_iters) / (lr_decay_iters − warmup_iters) in [0, 1):
///                                        min_lr + ½ (1 + cos(π r)) · (lr − min_lr)
/// The warmup never yields 0 (its first step already moves), and reaches lr · W / (W + 1) at
/// its last step; the cosine then starts from lr at step warmup_iters.
inline double warmup_cosine_lr(Index step, const WarmupCosineOptions& options) {
  VEIL_CHECK(step >= 0, ValueError, "warmup_cosine_lr: step must be >= 0, got ", step);
  VEIL_CHECK(std::isfinite(options.lr) && options.lr >= 0.0, ValueError,
             "warmup_cosine_lr: lr must be finite and >= 0, got ", options.lr);
  VEIL_CHECK(options.min_lr >= 0.0 && options.min_lr <= options.lr, ValueError,
             "warmup_cosine_lr: min_lr must be in [0, lr = ", options.lr, "], got ", options.min_lr);
  VEIL_CHECK(options.warmup_iters >= 0, ValueError, "warmup_cosine_lr: warmup_iters must be >= 0, got ",
             options.warmup_iters);
  VEIL_CHECK(options.lr_decay_iters >= options.warmup_iters, ValueError,
             "warmup_cosine_lr: lr_decay_iters must be >= warmup_iters = ", options.warmup_iters, ", got ",
             options.lr_decay_iters);
  if (step < options.warmup_iters)
    return options.lr * static_cast<double>(step + 1) / static_cast<double>(options.warmup_iters + 1);
  // nanoGPT returns min_lr for step > lr_decay_iters; at step == lr_decay_iters the cosine gives
  // min_lr too, so ">=" is the same function and needs no 0/0 when lr_decay_iters == warmup_iters.
  if (step >= options.lr_decay_iters) return options.min_lr;
  const double decay_ratio = static_cast<double>(step - options.warmup_iters) /
                             static_cast<double>(options.lr_decay_iters - options.warmup_iters);
  const double coefficient = 0.5 * (1.0 + std::cos(std::numbers::pi * decay_ratio));
  return options.min_lr + coefficient * (options.lr - options.min_lr);
}

}  // namespace veil::optim

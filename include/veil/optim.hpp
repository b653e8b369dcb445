// Front door of the optim layer: optimizers (SGD, AdamW) over named parameter groups, learning-
// rate schedules and gradient clipping.
#pragma once

#include "veil/optim/optimizer.hpp"
#include "veil/optim/sgd.hpp"
#include "veil/optim/adamw.hpp"
#include "veil/optim/lr_schedule.hpp"
#include "veil/optim/clip_grad.hpp"

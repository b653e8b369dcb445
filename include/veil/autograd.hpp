// Front door of the autograd layer: Node/record, the backward engine, NoGradGuard, gradcheck.
#pragma once

#include "veil/autograd/engine.hpp"
#include "veil/autograd/grad_mode.hpp"
#include "veil/autograd/gradcheck.hpp"
#include "veil/autograd/node.hpp"
#include "veil/tensor.hpp"

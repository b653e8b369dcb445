// Front door of the ops layer: every differentiable function on tensors.
#pragma once

#include "veil/autograd.hpp"
#include "veil/ops/elementwise.hpp"
#include "veil/ops/shape_ops.hpp"
#include "veil/ops/reduce.hpp"
#include "veil/ops/matmul.hpp"
#include "veil/ops/softmax.hpp"
#include "veil/ops/dropout.hpp"
#include "veil/ops/embedding.hpp"
#include "veil/ops/layer_norm.hpp"
#include "veil/ops/loss.hpp"

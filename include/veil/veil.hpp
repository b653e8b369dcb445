// Everything veil offers, in layer order.
#pragma once

#include "veil/core.hpp"
#include "veil/tensor.hpp"
#include "veil/autograd.hpp"
#include "veil/ops.hpp"
#include "veil/attention.hpp"
#include "veil/nn.hpp"
#include "veil/io.hpp"
#include "veil/optim.hpp"

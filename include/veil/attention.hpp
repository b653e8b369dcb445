// Front door of the attention layer: typed masks, the fused op, the reference path, checks.
#pragma once

#include "veil/attention/checks.hpp"
#include "veil/attention/mask.hpp"
#include "veil/attention/options.hpp"
#include "veil/attention/packed_sequences.hpp"
#include "veil/attention/reference_attention.hpp"
#include "veil/attention/scaled_dot_product.hpp"
#include "veil/ops.hpp"

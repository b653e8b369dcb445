// Front door of the nn layer: the Module base and the layers built on ops and attention.
#pragma once

#include "veil/nn/activation.hpp"
#include "veil/nn/dropout.hpp"
#include "veil/nn/embedding.hpp"
#include "veil/nn/layer_norm.hpp"
#include "veil/nn/linear.hpp"
#include "veil/nn/module.hpp"
#include "veil/nn/multi_head_attention.hpp"
#include "veil/nn/sequential.hpp"
#include "veil/nn/transformer_block.hpp"

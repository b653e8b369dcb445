// Front door of the io layer: safetensors checkpoints (save_safetensors, load_safetensors), the
// file dtypes with their half/bfloat16 conversions, and the atomic file writer they use.
#pragma once

#include "veil/io/atomic_file.hpp"
#include "veil/io/dtype.hpp"
#include "veil/io/safetensors.hpp"

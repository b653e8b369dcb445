// Front door of the tensor layer: Tensor<T>, shapes, storage and its cache, factories, Generator, printing.
#pragma once

#include "veil/core.hpp"
#include "veil/tensor/creation.hpp"
#include "veil/tensor/format.hpp"
#include "veil/tensor/random.hpp"
#include "veil/tensor/shape.hpp"
#include "veil/tensor/storage.hpp"
#include "veil/tensor/storage_cache.hpp"
#include "veil/tensor/tensor.hpp"

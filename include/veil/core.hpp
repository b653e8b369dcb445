// Front door of the core layer: errors, checks, index types, threading.
#pragma once

#include "veil/core/check.hpp"
#include "veil/core/error.hpp"
#include "veil/core/parallel.hpp"
#include "veil/core/types.hpp"
#include "veil/version.hpp"

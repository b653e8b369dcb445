// The exceptions veil throws. Every message names the argument, the expected and the actual value,
// so a caller can fix the call without reading the library.
#pragma once

#include <stdexcept>
#include <string>

namespace veil {

/// Base of every error veil reports; catch this to handle all of them.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A tensor argument has the wrong rank, extents or a shape that does not broadcast.
class ShapeError : public Error {
 public:
  using Error::Error;
};

/// A value argument is out of its documented range: an index, a probability, a dimension, a scale.
class ValueError : public Error {
 public:
  using Error::Error;
};

/// An attention mask is malformed or does not fit the attention call it is used in.
class MaskError : public Error {
 public:
  using Error::Error;
};

/// A file could not be read, written or validated.
class IoError : public Error {
 public:
  using Error::Error;
};

/// The autograd graph was used in a way it does not support (backward twice without retain_graph, ...).
class AutogradError : public Error {
 public:
  using Error::Error;
};

}  // namespace veil

// Element types as files spell them (safetensors "F32", "BF16", ...) and the byte-level conversions
// between them and veil's element types. Everything on disk is little-endian, whatever the host.
//
// Half (F16) and bfloat16 (BF16) are converted by hand: decoding is exact (every F16 and BF16 value
// is a float), encoding rounds to nearest, ties to even, straight from double, so a double never
// goes through float first (that would round twice).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "veil/core/check.hpp"

namespace veil::io {

/// The element types veil reads and writes. F32, F64, F16, BF16, I64 and BOOL cover checkpoints;
/// I32 and U8 are read (and written) so that files from other tools load.
enum class Dtype { BOOL, U8, I32, I64, F16, BF16, F32, F64 };

inline constexpr Dtype all_dtypes[] = {Dtype::BOOL, Dtype::U8,   Dtype::I32, Dtype::I64,
                                       Dtype::F16,  Dtype::BF16, Dtype::F32, Dtype::F64};

/// The spelling in a safetensors header.
constexpr std::string_view dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::BOOL: return "BOOL";
    case Dtype::U8: return "U8";
    case Dtype::I32: return "I32";
    case Dtype::I64: return "I64";
    case Dtype::F16: return "F16";
    case Dtype::BF16: return "BF16";
    case Dtype::F32: return "F32";
    case Dtype::F64: return "F64";
  }
  return "?";
}

/// Bytes per element.
constexpr std::size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::BOOL:
    case Dtype::U8: return 1;
    case Dtype::F16:
    case Dtype::BF16: return 2;
    case Dtype::I32:
    case Dtype::F32: return 4;
    case Dtype::I64:
    case Dtype::F64: return 8;
  }
  return 0;
}

constexpr bool is_floating(Dtype dtype) {
  return dtype == Dtype::F16 || dtype == Dtype::BF16 || dtype == Dtype::F32 || dtype == Dtype::F64;
}

/// The Dtype spelled `name`, or nothing for a name veil does not know.
inline std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (Dtype dtype : all_dtypes)
    if (dtype_name(dtype) == name) return dtype;
  return std::nullopt;
}

/// "BOOL, U8, ...": the list an error message offers.
inline std::string known_dtype_names() {
  std::string out;
  for (Dtype dtype : all_dtypes) out += (out.empty() ? "" : ", ") + std::string(dtype_name(dtype));
  return out;
}

/// The element types a Tensor<T> can hold in a file, and the Dtype each is written as.
template <class T>
inline constexpr bool is_storable_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                      std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::int32_t> ||
                                      std::is_same_v<T, std::uint8_t> || std::is_same_v<T, bool>;

template <class T>
constexpr Dtype dtype_of() {
  static_assert(is_storable_v<T>, "veil::io: element type must be float, double, int64, int32, uint8 or bool");
  if constexpr (std::is_same_v<T, float>) return Dtype::F32;
  else if constexpr (std::is_same_v<T, double>) return Dtype::F64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return Dtype::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return Dtype::I32;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return Dtype::U8;
  else return Dtype::BOOL;
}

namespace detail {

// ---- half and bfloat16 ---------------------------------------------------------------------------
// Both are IEEE-style binary formats with 1 sign bit, E exponent bits and M fraction bits:
// F16 has (E, M) = (5, 10), BF16 has (8, 7). One pair of routines serves both.

/// Bits of the nearest (ties to even) E/M-format value to `value`; overflow gives infinity and
/// NaN stays NaN (its top payload bits kept, the quiet bit set so it never turns into infinity).
template <int exponent_bits, int fraction_bits>
std::uint16_t encode_small_float(double value) {
  static_assert(1 + exponent_bits + fraction_bits == 16);
  constexpr int bias = (1 << (exponent_bits - 1)) - 1;
  constexpr int min_exponent = 1 - bias;  // of the smallest normal number
  constexpr std::uint32_t exponent_all_ones = (1u << exponent_bits) - 1;
  constexpr std::uint32_t infinity_bits = exponent_all_ones << fraction_bits;
  constexpr std::uint32_t quiet_bit = 1u << (fraction_bits - 1);

  const std::uint64_t bits = std::bit_cast<std::uint64_t>(value);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 63) << 15;
  const int double_exponent_field = static_cast<int>((bits >> 52) & 0x7ff);
  const std::uint64_t double_fraction = bits & ((std::uint64_t{1} << 52) - 1);

  if (double_exponent_field == 0x7ff) {
    if (double_fraction == 0) return static_cast<std::uint16_t>(sign | infinity_bits);
    const auto payload = static_cast<std::uint32_t>(double_fraction >> (52 - fraction_bits));
    return static_cast<std::uint16_t>(sign | infinity_bits | quiet_bit | payload);
  }
  // A double subnormal (< 2^-1022) is far below half an ulp of the smallest BF16 subnormal: it is 0.
  if (double_exponent_field == 0) return static_cast<std::uint16_t>(sign);

  // value = significand * 2^(exponent - 52) with the implicit bit in significand (53 bits).
  const std::uint64_t significand = double_fraction | (std::uint64_t{1} << 52);
  const int exponent = double_exponent_field - 1023;
  // The result is quotient * 2^(target_exponent - fraction_bits); subnormals share min_exponent.
  const int target_exponent = exponent < min_exponent ? min_exponent : exponent;
  const int shift = 52 - fraction_bits + (target_exponent - exponent);
  // shift >= 54 leaves less than half of the smallest step: rounds to 0 (significand < 2^53).
  if (shift >= 54) return static_cast<std::uint16_t>(sign);
  std::uint64_t quotient = significand >> shift;
  const std::uint64_t remainder = significand & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1))) ++quotient;
  // quotient carries the implicit bit at 2^fraction_bits for normal results (0 for subnormals), so
  // adding it to the field below lets a rounding carry step into the exponent, up to infinity.
  const std::uint64_t biased_minus_one = static_cast<std::uint64_t>(target_exponent + bias - 1);
  const std::uint64_t magnitude = (biased_minus_one << fraction_bits) + quotient;
  if (magnitude >= infinity_bits) return static_cast<std::uint16_t>(sign | infinity_bits);
  return static_cast<std::uint16_t>(sign | magnitude);
}

/// The exact value of E/M-format bits, as a double (NaN payloads kept in the top fraction bits).
template <int exponent_bits, int fraction_bits>
double decode_small_float(std::uint16_t bits) {
  constexpr int bias = (1 << (exponent_bits - 1)) - 1;
  constexpr std::uint32_t exponent_all_ones = (1u << exponent_bits) - 1;
  const bool negative = (bits >> 15) != 0;
  const std::uint32_t exponent_field = (bits >> fraction_bits) & exponent_all_ones;
  const std::uint32_t fraction = bits & ((1u << fraction_bits) - 1);
  if (exponent_field == exponent_all_ones) {
    const std::uint64_t payload = static_cast<std::uint64_t>(fraction) << (52 - fraction_bits);
    const std::uint64_t double_bits = (std::uint64_t{negative} << 63) | (std::uint64_t{0x7ff} << 52) | payload;
    return std::bit_cast<double>(double_bits);
  }
  const double magnitude =
      exponent_field == 0
          ? std::ldexp(static_cast<double>(fraction), 1 - bias - fraction_bits)
          : std::ldexp(static_cast<double>(fraction | (1u << fraction_bits)),
                       static_cast<int>(exponent_field) - bias - fraction_bits);
  return negative ? -magnitude : magnitude;
}

}  // namespace detail

/// IEEE binary16 bits of the value nearest to `value` (ties to even).
inline std::uint16_t float_to_half_bits(double value) { return detail::encode_small_float<5, 10>(value); }
inline double half_bits_to_double(std::uint16_t bits) { return detail::decode_small_float<5, 10>(bits); }
/// bfloat16 bits of the value nearest to `value` (ties to even).
inline std::uint16_t float_to_bfloat16_bits(double value) { return detail::encode_small_float<8, 7>(value); }
inline double bfloat16_bits_to_double(std::uint16_t bits) { return detail::decode_small_float<8, 7>(bits); }

namespace detail {

// ---- little-endian element bytes -----------------------------------------------------------------

template <class Unsigned>
Unsigned load_little_endian(const unsigned char* bytes) {
  Unsigned value = 0;
  for (std::size_t i = 0; i < sizeof(Unsigned); ++i) value |= static_cast<Unsigned>(bytes[i]) << (8 * i);
  return value;
}

template <class Unsigned>
void store_little_endian(Unsigned value, unsigned char* bytes) {
  for (std::size_t i = 0; i < sizeof(Unsigned); ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
}

/// Element `bytes` (dtype_size(dtype) of them) as a double; only for floating dtypes.
inline double read_floating(Dtype dtype, const unsigned char* bytes) {
  switch (dtype) {
    case Dtype::F16: return half_bits_to_double(load_little_endian<std::uint16_t>(bytes));
    case Dtype::BF16: return bfloat16_bits_to_double(load_little_endian<std::uint16_t>(bytes));
    case Dtype::F32: return static_cast<double>(std::bit_cast<float>(load_little_endian<std::uint32_t>(bytes)));
    case Dtype::F64: return std::bit_cast<double>(load_little_endian<std::uint64_t>(bytes));
    default: break;
  }
  veil::detail::fail<Error>("veil::io: read_floating called with ", dtype_name(dtype));
}

/// Element `bytes` as an integer; only for BOOL, U8, I32, I64.
inline std::int64_t read_integer(Dtype dtype, const unsigned char* bytes) {
  switch (dtype) {
    case Dtype::BOOL:
    case Dtype::U8: return bytes[0];
    case Dtype::I32: return static_cast<std::int32_t>(load_little_endian<std::uint32_t>(bytes));
    case Dtype::I64: return static_cast<std::int64_t>(load_little_endian<std::uint64_t>(bytes));
    default: break;
  }
  veil::detail::fail<Error>("veil::io: read_integer called with ", dtype_name(dtype));
}

/// Writes `value` as one element of `dtype`. A float kept as F32 (or double as F64) is copied
/// bit for bit, so NaN payloads and signalling NaNs survive a round trip.
template <class T>
void write_element(T value, Dtype dtype, unsigned char* bytes) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (dtype) {
      case Dtype::F16: return store_little_endian(float_to_half_bits(static_cast<double>(value)), bytes);
      case Dtype::BF16: return store_little_endian(float_to_bfloat16_bits(static_cast<double>(value)), bytes);
      case Dtype::F32: return store_little_endian(std::bit_cast<std::uint32_t>(static_cast<float>(value)), bytes);
      case Dtype::F64: return store_little_endian(std::bit_cast<std::uint64_t>(static_cast<double>(value)), bytes);
      default: break;
    }
  } else {
    switch (dtype) {
      case Dtype::BOOL: bytes[0] = value ? 1 : 0; return;
      case Dtype::U8: bytes[0] = static_cast<unsigned char>(value); return;
      case Dtype::I32: return store_little_endian(static_cast<std::uint32_t>(static_cast<std::int32_t>(value)), bytes);
      case Dtype::I64: return store_little_endian(static_cast<std::uint64_t>(static_cast<std::int64_t>(value)), bytes);
      default: break;
    }
  }
  veil::detail::fail<Error>("veil::io: cannot write this element type as ", dtype_name(dtype));
}

}  // namespace detail
}  // namespace veil::io

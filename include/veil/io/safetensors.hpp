// safetensors checkpoints: save a state dict, load it back, exchange weights with PyTorch.
//
// The format (huggingface/safetensors):
//   8 bytes   N, the header length, an unsigned 64-bit little-endian integer;
//   N bytes   a UTF-8 JSON object {name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//             ..., "__metadata__": {string: string}}, padded at the end with spaces;
//   the rest  the data section; each entry's bytes are [begin, end) relative to its start,
//             little-endian, row-major.
//
// What veil writes: "__metadata__" first (only when there is metadata), then the entries ordered by
// element size (largest first) and then by name, laid out back to back in that order; compact JSON
// padded with spaces so that 8 + N is a multiple of 8. Every entry then starts at a file offset
// that is a multiple of its element size. Tensors that share storage (tied weights) are written
// once per name; non-contiguous tensors are written in row-major order.
//
// What veil reads: anything the format allows, validated in full before any tensor bytes are
// allocated (the safetensors reference reader's rules, plus explicit duplicate-key detection,
// which JSON parsers otherwise resolve silently to the last value). Each violation is an IoError
// naming the file, the entry, the expected and the actual value.
//
// Saving is atomic (see atomic_file.hpp): a failed save leaves the previous file as it was.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "veil/io/atomic_file.hpp"
#include "veil/io/dtype.hpp"
#include "veil/nn/module.hpp"

namespace veil::io {

/// The "__metadata__" of a file: free-form string pairs ({"format": "pt"}, training step, ...).
using Metadata = std::map<std::string, std::string>;

struct LoadOptions {
  /// Largest header accepted, checked before it is read (the reference reader's limit).
  std::uint64_t max_header_bytes = 100'000'000;
};

/// What a floating-point state dict does with integer and bool entries (step counters, masks).
enum class IntegerEntries {
  refuse,   ///< IoError naming the entry: the default, since a silent cast hides a wrong file
  convert,  ///< cast the values to the floating type
  skip,     ///< leave the entry out of the state dict
};

struct ConversionOptions {
  IntegerEntries integer_entries = IntegerEntries::refuse;
};

/// One tensor as the file stores it.
struct SafetensorsEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  Shape shape;
  std::vector<unsigned char> bytes;  ///< numel() * dtype_size(dtype) bytes, little-endian, row-major

  Index numel() const { return numel_of(shape); }

  /// The entry holding `tensor`'s elements as `store_as` (default: T's own dtype). Floating tensors
  /// may be stored as any floating dtype (F16 and BF16 round to nearest, ties to even); integer
  /// and bool tensors only as their own dtype.
  template <class T>
  static SafetensorsEntry from_tensor(std::string name, const Tensor<T>& tensor, std::optional<Dtype> store_as = {});

  /// The values as a Tensor<T> (see SafetensorsFile::get for the conversions allowed).
  template <class T>
  Tensor<T> to_tensor(ConversionOptions options = {}) const;
};

namespace detail {

using veil::detail::concat;
using veil::detail::fail;

/// Names in messages: quoted, and cut short when a hostile file makes them huge.
inline std::string display_name(std::string_view text) {
  constexpr std::size_t longest = 200;
  if (text.size() <= longest) return concat('"', text, '"');
  return concat('"', text.substr(0, longest), "\"... (", text.size(), " bytes)");
}

/// A JSON value in a message, cut short like names.
inline std::string shown(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 80) + "...";
  return text;
}

/// Byte position of the first byte that is not well-formed UTF-8 (overlong forms, surrogates and
/// code points above U+10FFFF included), or nothing when all of `text` is.
inline std::optional<std::size_t> invalid_utf8_position(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t size = text.size();
  std::size_t i = 0;
  while (i < size) {
    const unsigned char lead = bytes[i];
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;  // allowed range of the second byte
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) low = 0xA0;   // no overlong three-byte forms
      if (lead == 0xED) high = 0x9F;  // no UTF-16 surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) low = 0x90;   // no overlong four-byte forms
      if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (i + length > size) return i;
    if (bytes[i + 1] < low || bytes[i + 1] > high) return i;
    for (std::size_t k = 2; k < length; ++k)
      if (bytes[i + k] < 0x80 || bytes[i + k] > 0xBF) return i;
    i += length;
  }
  return std::nullopt;
}

template <class T>
constexpr const char* element_type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, std::int64_t>) return "std::int64_t";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "std::int32_t";
  else if constexpr (std::is_same_v<T, std::uint8_t>) return "std::uint8_t";
  else return "bool";
}

/// The dtypes whose every value a Tensor<T> holds exactly (floating T: every floating dtype,
/// the narrowing F64 -> float included, as PyTorch's load does).
template <class T>
bool accepts(Dtype dtype) {
  if constexpr (std::is_floating_point_v<T>) return is_floating(dtype);
  else if constexpr (std::is_same_v<T, bool>) return dtype == Dtype::BOOL;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return dtype == Dtype::U8 || dtype == Dtype::BOOL;
  else if constexpr (std::is_same_v<T, std::int32_t>) return dtype == Dtype::I32 || dtype == Dtype::U8 || dtype == Dtype::BOOL;
  else return !is_floating(dtype);  // std::int64_t: every integer dtype
}

template <class T>
std::string accepted_names() {
  std::string out;
  for (Dtype dtype : all_dtypes)
    if (accepts<T>(dtype)) out += (out.empty() ? "" : ", ") + std::string(dtype_name(dtype));
  return out;
}

/// entry -> Tensor<T>; `context` ("'path': entry \"w\"") starts every message.
template <class T>
Tensor<T> entry_to_tensor(const SafetensorsEntry& entry, const ConversionOptions& options, const std::string& context) {
  static_assert(is_storable_v<T>, "veil::io: element type must be float, double, int64, int32, uint8 or bool");
  const bool integer_to_floating =
      std::is_floating_point_v<T> && !is_floating(entry.dtype) && options.integer_entries == IntegerEntries::convert;
  if (!accepts<T>(entry.dtype) && !integer_to_floating) {
    if constexpr (std::is_floating_point_v<T>) {
      fail<IoError>(context, " holds ", dtype_name(entry.dtype), " values; a Tensor<", element_type_name<T>(),
                    "> takes ", accepted_names<T>(),
                    " (pass ConversionOptions{.integer_entries = IntegerEntries::convert} to convert integer "
                    "entries, or IntegerEntries::skip to leave them out)");
    } else {
      fail<IoError>(context, " holds ", dtype_name(entry.dtype), " values; a Tensor<", element_type_name<T>(),
                    "> takes ", accepted_names<T>(), " without loss");
    }
  }
  Index count = 0;
  try {
    count = numel_of(entry.shape);
  } catch (const ShapeError& error) {
    fail<IoError>(context, ": invalid shape: ", error.what());
  }
  const std::size_t width = dtype_size(entry.dtype);
  VEIL_CHECK(entry.bytes.size() / width == static_cast<std::uint64_t>(count) && entry.bytes.size() % width == 0,
             IoError, context, ": expected ", count, " x ", width, " bytes for shape ", to_string(entry.shape),
             " and dtype ", dtype_name(entry.dtype), ", got ", entry.bytes.size());
  Tensor<T> out = Tensor<T>::empty(entry.shape);
  T* destination = out.data();
  const unsigned char* source = entry.bytes.data();
  for (Index i = 0; i < count; ++i, source += width) {
    if constexpr (std::is_same_v<T, float>) {
      // Bit copy, so that a signalling NaN is not quieted on the way through double.
      destination[i] = entry.dtype == Dtype::F32 ? std::bit_cast<float>(load_little_endian<std::uint32_t>(source))
                       : is_floating(entry.dtype) ? static_cast<float>(read_floating(entry.dtype, source))
                                                  : static_cast<float>(read_integer(entry.dtype, source));
    } else if constexpr (std::is_same_v<T, double>) {
      destination[i] = is_floating(entry.dtype) ? read_floating(entry.dtype, source)
                                                : static_cast<double>(read_integer(entry.dtype, source));
    } else if constexpr (std::is_same_v<T, bool>) {
      destination[i] = source[0] != 0;
    } else {
      destination[i] = static_cast<T>(read_integer(entry.dtype, source));
    }
  }
  return out;
}

/// Writes `tensor`'s elements as `dtype` through `sink(bytes, size)`, in row-major order, in chunks.
template <class T, class Sink>
void encode_tensor(const Tensor<T>& tensor, Dtype dtype, Sink&& sink) {
  const std::size_t width = dtype_size(dtype);
  if (tensor.numel() == 0) return;
  if (dtype == dtype_of<T>() && !std::is_same_v<T, bool> && std::endian::native == std::endian::little &&
      tensor.is_contiguous()) {
    sink(reinterpret_cast<const unsigned char*>(tensor.data()), static_cast<std::size_t>(tensor.numel()) * width);
    return;
  }
  constexpr std::size_t chunk_bytes = 1 << 16;
  std::vector<unsigned char> chunk(chunk_bytes);
  std::size_t used = 0;
  const T* base = tensor.storage()->data();
  veil::detail::for_each_offset(tensor, [&](Index, Index position) {
    if (used + width > chunk_bytes) {
      sink(chunk.data(), used);
      used = 0;
    }
    write_element(base[position], dtype, chunk.data() + used);
    used += width;
  });
  sink(chunk.data(), used);
}

/// A tensor to be written: its header fields and a function writing exactly byte_count bytes.
struct PlannedEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  Shape shape;
  std::uint64_t byte_count = 0;
  std::function<void(AtomicFileWriter&)> write_bytes;
};

inline constexpr std::string_view metadata_key = "__metadata__";
inline constexpr std::uint64_t max_written_header_bytes = 100'000'000;

/// Checks everything, then writes header and data atomically.
inline void write_safetensors(const std::filesystem::path& path, std::vector<PlannedEntry> planned,
                              const Metadata& metadata) {
  const std::string who = concat("save_safetensors: '", path.string(), "'");
  std::set<std::string_view> seen;
  for (const auto& entry : planned) {
    // The reference writer once accepted this name and produced files no reader could open.
    VEIL_CHECK(entry.name != metadata_key, IoError, who, ": a tensor cannot be named \"__metadata__\" (reserved for metadata)");
    VEIL_CHECK(!invalid_utf8_position(entry.name), IoError, who, ": tensor name ", display_name(entry.name),
               " is not valid UTF-8 (byte ", *invalid_utf8_position(entry.name), ")");
    VEIL_CHECK(seen.insert(entry.name).second, IoError, who, ": duplicate tensor name ", display_name(entry.name));
  }
  for (const auto& [key, value] : metadata) {
    VEIL_CHECK(!invalid_utf8_position(key), IoError, who, ": metadata key ", display_name(key), " is not valid UTF-8");
    VEIL_CHECK(!invalid_utf8_position(value), IoError, who, ": metadata value of ", display_name(key), " is not valid UTF-8");
  }
  std::stable_sort(planned.begin(), planned.end(), [](const PlannedEntry& a, const PlannedEntry& b) {
    const std::size_t size_a = dtype_size(a.dtype), size_b = dtype_size(b.dtype);
    return size_a != size_b ? size_a > size_b : a.name < b.name;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(metadata_key)] = metadata;
  std::uint64_t offset = 0;
  for (const auto& entry : planned) {
    std::uint64_t end = 0;
    VEIL_CHECK(!__builtin_add_overflow(offset, entry.byte_count, &end), IoError, who, ": total size overflows 64 bits");
    nlohmann::ordered_json fields = nlohmann::ordered_json::object();
    fields["dtype"] = std::string(dtype_name(entry.dtype));
    fields["shape"] = entry.shape;
    fields["data_offsets"] = {offset, end};
    header[entry.name] = std::move(fields);
    offset = end;
  }
  std::string text = header.dump();
  // Spaces up to a multiple of 8 (8 + N then is one too), so the data section starts aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  VEIL_CHECK(text.size() <= max_written_header_bytes, IoError, who, ": the header would be ", text.size(),
             " bytes, more than readers accept (", max_written_header_bytes, ")");

  AtomicFileWriter writer(path, "save_safetensors");
  unsigned char length[8];
  store_little_endian<std::uint64_t>(text.size(), length);
  writer.write(length, sizeof length);
  writer.write(text.data(), text.size());
  for (const auto& entry : planned) entry.write_bytes(writer);
  writer.commit();
}

// ---- reading ---------------------------------------------------------------------------------------

/// One header entry after validation.
struct HeaderEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;
};

struct ParsedHeader {
  std::vector<HeaderEntry> entries;  // sorted by offsets
  Metadata metadata;
};

/// Parses the header text; throws IoError on malformed JSON, duplicate keys or deep nesting.
inline nlohmann::json parse_header_json(const std::string& text, const std::string& context) {
  // nlohmann::json keeps the last of two equal keys without a word, so a file could show one
  // reader one tensor and another reader another. The parser callback sees every key first.
  struct Frame {
    std::string owner;  // the key this object is the value of ("" at the top)
    std::set<std::string> keys;
    std::string last_key;
  };
  constexpr int max_depth = 16;  // a valid header nests 3 deep; this bounds the work on a hostile one
  std::vector<Frame> frames;
  int depth = 0;
  const auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        VEIL_CHECK(++depth <= max_depth, IoError, context, ": the header nests deeper than ", max_depth,
                   " levels (a valid header nests 3)");
        if (event == Event::object_start) frames.push_back({frames.empty() ? "" : frames.back().last_key, {}, {}});
        break;
      case Event::object_end:
      case Event::array_end:
        --depth;
        if (event == Event::object_end && !frames.empty()) frames.pop_back();
        break;
      case Event::key: {
        Frame& frame = frames.back();
        frame.last_key = parsed.get<std::string>();
        if (!frame.keys.insert(frame.last_key).second) {
          if (frames.size() == 1)
            fail<IoError>(context, ": duplicate key ", display_name(frame.last_key),
                          " in the header (each tensor name may appear once)");
          fail<IoError>(context, ": duplicate key ", display_name(frame.last_key), " in entry ", display_name(frame.owner));
        }
        break;
      }
      case Event::value: break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, callback);
  } catch (const nlohmann::json::exception& error) {
    fail<IoError>(context, ": the header is not valid JSON: ", error.what());
  }
}

/// A non-negative JSON integer that fits in `limit`, or an IoError naming `what`.
inline std::uint64_t read_unsigned(const nlohmann::json& value, std::uint64_t limit, const std::string& what) {
  VEIL_CHECK(value.is_number_unsigned(), IoError, what, ": expected a non-negative integer, got ", shown(value));
  const auto number = value.get<std::uint64_t>();
  VEIL_CHECK(number <= limit, IoError, what, ": expected at most ", limit, ", got ", number);
  return number;
}

inline HeaderEntry read_header_entry(const std::string& name, const nlohmann::json& fields, const std::string& context) {
  const std::string where = concat(context, ": entry ", display_name(name));
  VEIL_CHECK(fields.is_object(), IoError, where, ": expected an object {\"dtype\", \"shape\", \"data_offsets\"}, got ",
             shown(fields));
  for (const auto& [key, value] : fields.items())
    VEIL_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", IoError, where, ": unknown field ",
               display_name(key), " (expected exactly dtype, shape, data_offsets)");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    VEIL_CHECK(fields.contains(key), IoError, where, ": missing field \"", key,
               "\" (expected exactly dtype, shape, data_offsets)");

  HeaderEntry entry;
  entry.name = name;
  const auto& dtype = fields["dtype"];
  VEIL_CHECK(dtype.is_string(), IoError, where, ": dtype must be a string, got ", shown(dtype));
  const auto known = dtype_from_name(dtype.get<std::string>());
  VEIL_CHECK(known.has_value(), IoError, where, ": unknown dtype ", display_name(dtype.get<std::string>()), " (expected one of ",
             known_dtype_names(), ")");
  entry.dtype = *known;

  const auto& shape = fields["shape"];
  VEIL_CHECK(shape.is_array(), IoError, where, ": shape must be an array of non-negative integers, got ", shown(shape));
  // Every extent (zeros read as 1) must multiply without overflow, so strides stay representable
  // even for a shape holding no elements.
  Index product = 1;
  bool empty = false;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    const auto extent = static_cast<Index>(read_unsigned(shape[d], static_cast<std::uint64_t>(std::numeric_limits<Index>::max()),
                                                         concat(where, ": shape[", d, "]")));
    entry.shape.push_back(extent);
    empty |= extent == 0;
    VEIL_CHECK(!__builtin_mul_overflow(product, std::max<Index>(extent, 1), &product), IoError, where, ": shape ",
               shown(shape), " overflows: the element count does not fit in 64 bits");
  }
  const std::uint64_t count = empty ? 0 : static_cast<std::uint64_t>(product);
  std::uint64_t byte_count = 0;
  VEIL_CHECK(!__builtin_mul_overflow(count, dtype_size(entry.dtype), &byte_count), IoError, where, ": shape ",
             shown(shape), " of ", dtype_name(entry.dtype), " overflows: the byte count does not fit in 64 bits");

  const auto& offsets = fields["data_offsets"];
  VEIL_CHECK(offsets.is_array() && offsets.size() == 2, IoError, where,
             ": data_offsets must be an array [begin, end], got ", shown(offsets));
  constexpr auto any = std::numeric_limits<std::uint64_t>::max();
  entry.begin = read_unsigned(offsets[0], any, where + ": data_offsets[0]");
  entry.end = read_unsigned(offsets[1], any, where + ": data_offsets[1]");
  VEIL_CHECK(entry.begin <= entry.end, IoError, where, ": data_offsets [", entry.begin, ", ", entry.end,
             "] end before they begin");
  VEIL_CHECK(entry.end - entry.begin == byte_count, IoError, where, ": data_offsets [", entry.begin, ", ", entry.end,
             "] span ", entry.end - entry.begin, " bytes, but shape ", to_string(entry.shape), " of ",
             dtype_name(entry.dtype), " needs ", byte_count);
  return entry;
}

/// Validates the whole header against a data section of `data_size` bytes.
inline ParsedHeader read_header(const std::string& text, std::uint64_t data_size, const std::string& context) {
  if (auto position = invalid_utf8_position(text))
    fail<IoError>(context, ": the header is not valid UTF-8 (byte ", *position, " of the header)");
  // JSON has no place for a raw NUL byte, and nlohmann::json stops reading at one: "{}\0{...}" would
  // parse as "{}" here and as something else elsewhere.
  if (const auto position = text.find('\0'); position != std::string::npos)
    fail<IoError>(context, ": the header holds a NUL byte at byte ", position, " (JSON allows none; pad with spaces)");
  const nlohmann::json header = parse_header_json(text, context);
  VEIL_CHECK(header.is_object(), IoError, context, ": the header must be a JSON object, got ", shown(header));

  ParsedHeader parsed;
  for (const auto& [name, value] : header.items()) {
    if (name == metadata_key) {
      VEIL_CHECK(value.is_object(), IoError, context, ": __metadata__ must be an object of strings, got ", shown(value));
      for (const auto& [key, item] : value.items()) {
        VEIL_CHECK(item.is_string(), IoError, context, ": __metadata__ value of ", display_name(key),
                   " must be a string, got ", shown(item));
        parsed.metadata.emplace(key, item.get<std::string>());
      }
      continue;
    }
    parsed.entries.push_back(read_header_entry(name, value, context));
  }

  // The data section must be covered exactly: entries back to back from byte 0, no overlap (a few
  // bytes claimed by many entries), no gap and nothing after the last one (a polyglot file).
  auto& entries = parsed.entries;
  std::sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  const HeaderEntry* previous = nullptr;
  for (const auto& entry : entries) {
    const std::string where = concat(context, ": entry ", display_name(entry.name));
    VEIL_CHECK(entry.end <= data_size, IoError, where, ": data_offsets [", entry.begin, ", ", entry.end,
               "] run past the end of the data section (", data_size, " bytes); the file is truncated or the offsets are wrong");
    VEIL_CHECK(entry.begin >= covered, IoError, where, ": data_offsets [", entry.begin, ", ", entry.end,
               "] overlap entry ", previous ? display_name(previous->name) : std::string("?"), ", which ends at ", covered);
    VEIL_CHECK(entry.begin == covered, IoError, where, ": data_offsets begin at ", entry.begin, ", expected ", covered,
               " (a gap of ", entry.begin - covered, " bytes that belong to no entry)");
    covered = entry.end;
    previous = &entry;
  }
  VEIL_CHECK(covered == data_size, IoError, context, ": trailing bytes: the entries cover ", covered,
             " bytes, but the data section holds ", data_size, " (", data_size - covered,
             " bytes belong to no entry)");
  return parsed;
}

}  // namespace detail

/// A loaded safetensors file: every entry's bytes as stored, and the metadata. Convert with
/// get<T>(name) or to_state_dict<T>(), or pass it straight to Module::load_state_dict.
class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  /// `source` names the file in error messages.
  SafetensorsFile(std::string source, std::vector<SafetensorsEntry> entries, Metadata metadata)
      : source_(std::move(source)), entries_(std::move(entries)), metadata_(std::move(metadata)) {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      VEIL_CHECK(index_.emplace(entries_[i].name, i).second, IoError, context(), ": duplicate tensor name ",
                 detail::display_name(entries_[i].name));
  }

  const std::string& source() const { return source_; }
  const Metadata& metadata() const { return metadata_; }
  /// In file order (by data offset).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  std::size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  /// The entry called `name`; IoError when there is none.
  const SafetensorsEntry& entry(const std::string& name) const {
    auto found = index_.find(name);
    VEIL_CHECK(found != index_.end(), IoError, context(), ": no tensor named ", detail::display_name(name), " (the file has ",
               entries_.size(), " entries)");
    return entries_[found->second];
  }

  /// One tensor. Floating T takes F16, BF16, F32 and F64 (rounding F64 to float) and, with
  /// IntegerEntries::convert, integer and bool entries too; std::int64_t takes I64, I32, U8 and
  /// BOOL; std::int32_t takes I32, U8, BOOL; std::uint8_t takes U8, BOOL; bool takes BOOL.
  template <class T>
  Tensor<T> get(const std::string& name, ConversionOptions options = {}) const {
    const SafetensorsEntry& found = entry(name);
    return detail::entry_to_tensor<T>(found, options, entry_context(found.name));
  }

  /// Every entry as a Tensor<T> of a floating type; integer and bool entries as `options` says.
  template <class T>
  nn::StateDict<T> to_state_dict(ConversionOptions options = {}) const {
    static_assert(std::is_floating_point_v<T>, "to_state_dict: a state dict holds float or double tensors");
    nn::StateDict<T> out;
    for (const auto& item : entries_) {
      if (!is_floating(item.dtype) && options.integer_entries == IntegerEntries::skip) continue;
      out.emplace(item.name, detail::entry_to_tensor<T>(item, options, entry_context(item.name)));
    }
    return out;
  }

  /// So that `model.load_state_dict(veil::io::load_safetensors(path))` works; integer entries refused.
  template <class T>
    requires std::is_floating_point_v<T>
  operator nn::StateDict<T>() const {
    return to_state_dict<T>();
  }

 private:
  std::string context() const { return detail::concat("safetensors '", source_, "'"); }
  std::string entry_context(const std::string& name) const {
    return detail::concat(context(), ": entry ", detail::display_name(name));
  }

  std::string source_;
  std::vector<SafetensorsEntry> entries_;
  Metadata metadata_;
  std::map<std::string, std::size_t> index_;
};

// ---- SafetensorsEntry members ---------------------------------------------------------------------

template <class T>
SafetensorsEntry SafetensorsEntry::from_tensor(std::string name, const Tensor<T>& tensor, std::optional<Dtype> store_as) {
  static_assert(is_storable_v<T>, "veil::io: element type must be float, double, int64, int32, uint8 or bool");
  VEIL_CHECK(tensor.defined(), IoError, "SafetensorsEntry::from_tensor: tensor ", detail::display_name(name), " is undefined");
  const Dtype dtype = store_as.value_or(dtype_of<T>());
  if constexpr (std::is_floating_point_v<T>) {
    VEIL_CHECK(is_floating(dtype), IoError, "SafetensorsEntry::from_tensor: tensor ", detail::display_name(name), " of ",
               detail::element_type_name<T>(), " can be stored as F16, BF16, F32 or F64, not ", dtype_name(dtype));
  } else {
    VEIL_CHECK(dtype == dtype_of<T>(), IoError, "SafetensorsEntry::from_tensor: tensor ", detail::display_name(name), " of ",
               detail::element_type_name<T>(), " is stored as ", dtype_name(dtype_of<T>()), ", not ", dtype_name(dtype));
  }
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = dtype;
  entry.shape = tensor.shape();
  entry.bytes.reserve(static_cast<std::size_t>(tensor.numel()) * dtype_size(dtype));
  detail::encode_tensor(tensor, dtype, [&](const unsigned char* bytes, std::size_t size) {
    entry.bytes.insert(entry.bytes.end(), bytes, bytes + size);
  });
  return entry;
}

template <class T>
Tensor<T> SafetensorsEntry::to_tensor(ConversionOptions options) const {
  return detail::entry_to_tensor<T>(*this, options, detail::concat("entry ", detail::display_name(name)));
}

// ---- saving ------------------------------------------------------------------------------------------

/// Writes `tensors` (a state dict) to `path`, atomically. Floating tensors are stored as their own
/// dtype or as `store_as` (F16, BF16, F32, F64); integer and bool tensors as their own dtype.
template <class T>
void save_safetensors(const std::filesystem::path& path, const nn::StateDict<T>& tensors, const Metadata& metadata = {},
                      std::optional<Dtype> store_as = std::nullopt) {
  static_assert(is_storable_v<T>, "save_safetensors: element type must be float, double, int64, int32, uint8 or bool");
  const Dtype dtype = store_as.value_or(dtype_of<T>());
  std::vector<detail::PlannedEntry> planned;
  for (const auto& [name, tensor] : tensors) {
    VEIL_CHECK(tensor.defined(), IoError, "save_safetensors: '", path.string(), "': tensor ", detail::display_name(name),
               " is undefined");
    if constexpr (std::is_floating_point_v<T>) {
      VEIL_CHECK(is_floating(dtype), IoError, "save_safetensors: '", path.string(), "': store_as must be F16, BF16, F32 or F64 for ",
                 detail::element_type_name<T>(), " tensors, got ", dtype_name(dtype));
    } else {
      VEIL_CHECK(dtype == dtype_of<T>(), IoError, "save_safetensors: '", path.string(), "': ", detail::element_type_name<T>(),
                 " tensors are stored as ", dtype_name(dtype_of<T>()), ", got store_as ", dtype_name(dtype));
    }
    const Tensor<T>* source = &tensor;
    planned.push_back({name, dtype, tensor.shape(),
                       static_cast<std::uint64_t>(tensor.numel()) * dtype_size(dtype),
                       [source, dtype](AtomicFileWriter& writer) {
                         detail::encode_tensor(*source, dtype, [&](const unsigned char* bytes, std::size_t size) {
                           writer.write(bytes, size);
                         });
                       }});
  }
  detail::write_safetensors(path, std::move(planned), metadata);
}

/// Writes entries of any dtypes (a mixed checkpoint: float weights, an I64 step, a BOOL mask).
inline void save_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsEntry>& entries,
                             const Metadata& metadata = {}) {
  std::vector<detail::PlannedEntry> planned;
  for (const auto& entry : entries) {
    std::uint64_t expected = 0;
    Index count = 0;
    try {
      count = numel_of(entry.shape);
    } catch (const ShapeError& error) {
      detail::fail<IoError>("save_safetensors: '", path.string(), "': entry ", detail::display_name(entry.name), ": ", error.what());
    }
    VEIL_CHECK(!__builtin_mul_overflow(static_cast<std::uint64_t>(count), dtype_size(entry.dtype), &expected) &&
                   expected == entry.bytes.size(),
               IoError, "save_safetensors: '", path.string(), "': entry ", detail::display_name(entry.name), ": shape ",
               to_string(entry.shape), " of ", dtype_name(entry.dtype), " needs ", expected, " bytes, got ",
               entry.bytes.size());
    const SafetensorsEntry* source = &entry;
    planned.push_back({entry.name, entry.dtype, entry.shape, expected, [source](AtomicFileWriter& writer) {
                         writer.write(source->bytes.data(), source->bytes.size());
                       }});
  }
  detail::write_safetensors(path, std::move(planned), metadata);
}

/// Writes a loaded (possibly edited) file back, with its metadata.
inline void save_safetensors(const std::filesystem::path& path, const SafetensorsFile& file) {
  save_safetensors(path, file.entries(), file.metadata());
}

// ---- loading ------------------------------------------------------------------------------------------

/// Reads and validates a whole safetensors file. Every check on the header runs before any tensor
/// memory is allocated; the header itself is read only once its length is known to be at most
/// options.max_header_bytes and to fit in the file.
inline SafetensorsFile load_safetensors(const std::filesystem::path& path, LoadOptions options = {}) {
  using detail::fail;
  const std::string context = detail::concat("load_safetensors: '", path.string(), "'");
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  VEIL_CHECK(std::filesystem::exists(status), IoError, context, ": cannot open: no such file");
  VEIL_CHECK(!error, IoError, context, ": cannot open: ", error.message());
  VEIL_CHECK(std::filesystem::is_regular_file(status), IoError, context, ": cannot open: not a regular file");
  std::ifstream in(path, std::ios::binary);
  VEIL_CHECK(in.is_open(), IoError, context, ": cannot open for reading");
  // The size is the opened file's, not the path's: a save renaming a new file over the path
  // between a size query by name and the open would pair one file's size with the other's bytes.
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(0, std::ios::beg);
  VEIL_CHECK(end >= 0 && in.good(), IoError, context, ": cannot read the file size");
  const auto file_size = static_cast<std::uintmax_t>(end);

  VEIL_CHECK(file_size >= 8, IoError, context, ": the file is ", file_size,
             " bytes, too small for the 8-byte header length");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  VEIL_CHECK(in.gcount() == 8, IoError, context, ": reading the header length failed");
  const auto header_length = detail::load_little_endian<std::uint64_t>(length_bytes);
  VEIL_CHECK(header_length <= options.max_header_bytes, IoError, context, ": header length ", header_length,
             " exceeds the limit of ", options.max_header_bytes, " bytes");
  VEIL_CHECK(header_length <= file_size - 8, IoError, context, ": header length ", header_length,
             " runs past the end of the file (", file_size - 8, " bytes follow the length)");
  VEIL_CHECK(header_length >= 2, IoError, context, ": header length ", header_length,
             " is too small for a JSON object (expected at least 2, \"{}\")");

  std::string text(static_cast<std::size_t>(header_length), '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_length));
  VEIL_CHECK(static_cast<std::uint64_t>(in.gcount()) == header_length, IoError, context, ": reading the header failed");
  const std::uint64_t data_size = file_size - 8 - header_length;
  detail::ParsedHeader header = detail::read_header(text, data_size, context);

  // Only now, with every entry checked and the sizes adding up to the file size, allocate.
  std::vector<SafetensorsEntry> entries;
  entries.reserve(header.entries.size());
  for (auto& item : header.entries) {
    SafetensorsEntry entry{std::move(item.name), item.dtype, std::move(item.shape), {}};
    entry.bytes.resize(static_cast<std::size_t>(item.end - item.begin));
    in.read(reinterpret_cast<char*>(entry.bytes.data()), static_cast<std::streamsize>(entry.bytes.size()));
    VEIL_CHECK(static_cast<std::uint64_t>(in.gcount()) == entry.bytes.size(), IoError, context, ": entry ",
               detail::display_name(entry.name), ": reading its ", entry.bytes.size(), " bytes failed (was the file truncated while being read?)");
    if (entry.dtype == Dtype::BOOL) {
      // A bool byte other than 0 or 1 has no meaning (and is undefined behaviour as a C++ bool).
      const auto bad = std::find_if(entry.bytes.begin(), entry.bytes.end(), [](unsigned char byte) { return byte > 1; });
      VEIL_CHECK(bad == entry.bytes.end(), IoError, context, ": entry ", detail::display_name(entry.name),
                 ": BOOL element ", bad - entry.bytes.begin(), " is byte ", static_cast<int>(*bad), ", expected 0 or 1");
    }
    entries.push_back(std::move(entry));
  }
  VEIL_CHECK(in.peek() == std::ifstream::traits_type::eof(), IoError, context,
             ": the file grew while being read (trailing bytes after the last entry)");
  return SafetensorsFile(path.string(), std::move(entries), std::move(header.metadata));
}

}  // namespace veil::io

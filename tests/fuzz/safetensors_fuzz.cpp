// Fuzzes the safetensors reader with raw file bytes.
//
// Accepted outcomes: veil::Error, or a file that loads. A loaded file must then be consistent all
// the way through: every entry converts to a tensor of its own element type, holding exactly the
// stored values; writing the file back and loading it again gives the same entries and metadata;
// writing the tensors (not the raw bytes) gives the same bytes again; and a second write is byte
// for byte the first. Anything else (another exception type, a sanitizer report) is a finding.
//
// The reader only loads from a path, so each input goes through a file in a per-process scratch
// directory (tests/fuzz/run puts TMPDIR on tmpfs when it can).
#include <veil/io.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;
using veil::io::Dtype;
using veil::io::SafetensorsEntry;
using veil::io::SafetensorsFile;
using veil_fuzz::fuzz_failure;

void write_file(const fs::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  VEIL_FUZZ_CHECK(out.good(), "cannot write the scratch file ", path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Same bits, or (for floating dtypes) both NaN: the F16/BF16 encoder sets the quiet bit of a
/// signalling NaN on purpose (dtype.hpp), so a NaN may come back with that one bit changed.
bool same_element(Dtype dtype, const unsigned char* a, const unsigned char* b) {
  const std::size_t width = veil::io::dtype_size(dtype);
  if (std::memcmp(a, b, width) == 0) return true;
  using veil::io::detail::load_little_endian;
  switch (dtype) {
    case Dtype::F16:
      return std::isnan(veil::io::half_bits_to_double(load_little_endian<std::uint16_t>(a))) &&
             std::isnan(veil::io::half_bits_to_double(load_little_endian<std::uint16_t>(b)));
    case Dtype::BF16:
      return std::isnan(veil::io::bfloat16_bits_to_double(load_little_endian<std::uint16_t>(a))) &&
             std::isnan(veil::io::bfloat16_bits_to_double(load_little_endian<std::uint16_t>(b)));
    default: return false;
  }
}

/// Same names, dtypes, shapes and metadata; the same bytes, or with `nan_quieted` the same
/// elements up to same_element().
void check_same_entries(const SafetensorsFile& expected, const SafetensorsFile& actual, const char* what,
                        bool nan_quieted = false) {
  VEIL_FUZZ_CHECK(expected.metadata() == actual.metadata(), what, ": metadata differs");
  VEIL_FUZZ_CHECK(expected.size() == actual.size(), what, ": ", expected.size(), " entries became ", actual.size());
  for (const SafetensorsEntry& entry : expected.entries()) {
    VEIL_FUZZ_CHECK(actual.contains(entry.name), what, ": entry ", entry.name, " is missing");
    const SafetensorsEntry& other = actual.entry(entry.name);
    VEIL_FUZZ_CHECK(other.dtype == entry.dtype && other.shape == entry.shape, what, ": entry ", entry.name,
                    " changed dtype or shape");
    if (!nan_quieted || other.bytes.size() != entry.bytes.size()) {
      VEIL_FUZZ_CHECK(other.bytes == entry.bytes, what, ": entry ", entry.name, " changed its bytes");
      continue;
    }
    const std::size_t width = veil::io::dtype_size(entry.dtype);
    for (std::size_t at = 0; at < entry.bytes.size(); at += width)
      VEIL_FUZZ_CHECK(same_element(entry.dtype, entry.bytes.data() + at, other.bytes.data() + at), what, ": entry ",
                      entry.name, ": element ", at / width, " changed");
  }
}

/// The entry as a Tensor<T> of its own element type, checked against the stored bytes, and
/// turned back into an entry of the same dtype.
template <class T>
SafetensorsEntry through_tensor(const SafetensorsFile& file, const SafetensorsEntry& entry) {
  const veil::Tensor<T> tensor = file.get<T>(entry.name);
  VEIL_FUZZ_CHECK(tensor.shape() == entry.shape, "get: entry ", entry.name, " has shape ", veil::to_string(entry.shape),
                  " but its tensor ", veil::to_string(tensor.shape()));
  VEIL_FUZZ_CHECK(tensor.numel() * static_cast<veil::Index>(veil::io::dtype_size(entry.dtype)) ==
                      static_cast<veil::Index>(entry.bytes.size()),
                  "get: entry ", entry.name, ": element count and byte count disagree");
  SafetensorsEntry back = SafetensorsEntry::from_tensor(entry.name, tensor, entry.dtype);
  VEIL_FUZZ_CHECK(back.bytes.size() == entry.bytes.size(), "from_tensor: entry ", entry.name, " changed its size");
  const std::size_t width = veil::io::dtype_size(entry.dtype);
  for (std::size_t at = 0; at < entry.bytes.size(); at += width)
    VEIL_FUZZ_CHECK(same_element(entry.dtype, entry.bytes.data() + at, back.bytes.data() + at), "entry ", entry.name,
                    ": element ", at / width, " changed on the way through Tensor");
  return back;
}

SafetensorsEntry through_tensor(const SafetensorsFile& file, const SafetensorsEntry& entry) {
  switch (entry.dtype) {
    case Dtype::BOOL: return through_tensor<bool>(file, entry);
    case Dtype::U8: return through_tensor<std::uint8_t>(file, entry);
    case Dtype::I32: return through_tensor<std::int32_t>(file, entry);
    case Dtype::I64: return through_tensor<std::int64_t>(file, entry);
    case Dtype::F64: return through_tensor<double>(file, entry);
    case Dtype::F16:
    case Dtype::BF16:
    case Dtype::F32: return through_tensor<float>(file, entry);  // exact for all three
  }
  fuzz_failure("entry ", entry.name, " has no known dtype");
}

void check_loaded(const SafetensorsFile& file, const fs::path& directory) {
  // Every tensor, and a floating state dict with integer entries converted.
  std::vector<SafetensorsEntry> rebuilt;
  for (const SafetensorsEntry& entry : file.entries()) rebuilt.push_back(through_tensor(file, entry));
  const auto state = file.to_state_dict<double>({.integer_entries = veil::io::IntegerEntries::convert});
  VEIL_FUZZ_CHECK(state.size() == file.size(), "to_state_dict: ", file.size(), " entries became ", state.size());

  // The file written back loads as the same file, and writing is deterministic.
  const fs::path first = directory / "first.safetensors", second = directory / "second.safetensors";
  veil::io::save_safetensors(first, file);
  const SafetensorsFile reloaded = veil::io::load_safetensors(first);
  check_same_entries(file, reloaded, "save then load");
  const std::string first_bytes = read_file(first);
  VEIL_FUZZ_CHECK(first_bytes.size() >= 8, "the written file is shorter than its length prefix");
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = header_length << 8 | static_cast<unsigned char>(first_bytes[i]);
  VEIL_FUZZ_CHECK((8 + header_length) % 8 == 0, "the written header leaves the data unaligned: ", header_length);
  veil::io::save_safetensors(second, reloaded);
  VEIL_FUZZ_CHECK(read_file(second) == first_bytes, "saving the same entries twice gave different bytes");

  // The entries rebuilt from tensors write the same file.
  veil::io::save_safetensors(second, rebuilt, file.metadata());
  check_same_entries(reloaded, veil::io::load_safetensors(second), "tensors saved then loaded", true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path& directory = veil_fuzz::scratch_directory();
  const fs::path input = directory / "input.safetensors";
  write_file(input, data, size);
  SafetensorsFile file;
  try {
    // A small header cap, so that a large declared length is refused without reading it.
    file = veil::io::load_safetensors(input, {.max_header_bytes = 1 << 20});
  } catch (const veil::Error&) {
    return 0;  // the reader refused the file: accepted
  } catch (const std::exception& error) {
    fuzz_failure("load_safetensors threw an exception that is not a veil::Error: ", error.what());
  }
  // A file that loaded converts, saves and reloads without any error.
  try {
    check_loaded(file, directory);
  } catch (const std::exception& error) {
    fuzz_failure("a file that loaded failed to convert, save or reload: ", error.what());
  }
  return 0;
}

// Helpers shared by the io tests: a scratch directory removed afterwards, whole-file reads and
// writes, and a two-parameter model to load checkpoints into.
#pragma once

#include <veil/io.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <unistd.h>
#include <vector>

namespace veil_test {

/// A fresh directory under the system temp directory, removed with everything in it.
class ScratchDirectory {
 public:
  ScratchDirectory() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("veil-io-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  ~ScratchDirectory() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  /// Names of everything in the directory (to spot a temporary file left behind).
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& item : std::filesystem::directory_iterator(path_)) names.push_back(item.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.is_open());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.is_open());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

/// The 8-byte little-endian length prefix.
inline std::string length_prefix(std::uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
  return out;
}

/// A safetensors file from a header text and a data section, the length prefix computed.
inline std::string safetensors_bytes(const std::string& header, const std::string& data = "") {
  return length_prefix(header.size()) + header + data;
}

/// weight [3, 2] and bias [3]: enough structure for checkpoint round trips.
class TinyModel : public veil::nn::Module<float> {
 public:
  explicit TinyModel(std::uint64_t seed) {
    veil::Generator generator(seed);
    weight = register_parameter("weight", veil::randn<float>({3, 2}, generator));
    bias = register_parameter("bias", veil::randn<float>({3}, generator));
  }
  veil::Tensor<float> weight, bias;
};

}  // namespace veil_test

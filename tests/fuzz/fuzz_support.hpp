// Shared by the fuzz targets: what counts as a finding, and a scratch directory per process.
//
// A target returns normally for an accepted outcome (a result that passed its checks, or a typed
// error) and calls fuzz_failure() for anything else, which aborts so that libFuzzer records the
// input as a crash and stops the campaign.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <veil/core/check.hpp>

namespace veil_fuzz {

/// What the current input decoded to (geometry, mask, ...), printed with a finding.
inline std::string& input_description() {
  static std::string description;
  return description;
}

template <class... Parts>
[[noreturn]] void fuzz_failure(Parts&&... parts) {
  const std::string message = veil::detail::concat(std::forward<Parts>(parts)...);
  std::fprintf(stderr, "fuzz failure: %s\n", message.c_str());
  if (!input_description().empty()) std::fprintf(stderr, "input: %s\n", input_description().c_str());
  std::abort();
}

#define VEIL_FUZZ_CHECK(cond, ...)                                                            \
  do {                                                                                        \
    if (!(cond)) ::veil_fuzz::fuzz_failure(__FILE__, ":", __LINE__, ": ", #cond, ": ", __VA_ARGS__); \
  } while (false)

/// A directory of this process's own under the temp directory (TMPDIR, so a run can put it on
/// tmpfs: the loaders under test read files, and the writer fsyncs), removed at exit.
inline const std::filesystem::path& scratch_directory() {
  // Never destroyed, so that the exit handler below can still read it.
  static const auto* path = [] {
    auto* directory = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                                ("veil-fuzz-" + std::to_string(::getpid())));
    std::filesystem::remove_all(*directory);
    std::filesystem::create_directories(*directory);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_directory(), ignored);
    });
    return directory;
  }();
  return *path;
}

}  // namespace veil_fuzz

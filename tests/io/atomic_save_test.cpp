// Atomic saves: a save that fails (missing or unusable directory, a directory in the way, a write
// error part-way through) throws IoError, leaves the previous checkpoint byte for byte as it was and
// leaves no temporary file behind. The failures are ones that also happen as root (CI runs tests
// as root, where a read-only directory stops nothing): RLIMIT_FSIZE stands in for a full disk.
#include "io/io_test_support.hpp"
#include "support/message_contains.hpp"

#include <csignal>
#include <sys/resource.h>
#include <unistd.h>

#include <string>
#include <vector>

using veil_test::MessageContains;
using veil_test::ScratchDirectory;

namespace {

veil::nn::StateDict<float> checkpoint(veil::Index size, float value) {
  return {{"weight", veil::full<float>({size}, value)}, {"bias", veil::full<float>({3}, value)}};
}

/// Limits the size of any file this process writes, and turns the signal that would otherwise
/// kill the process into a plain EFBIG from write(). Restores both on destruction.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &previous_limit_) == 0);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = previous_limit_;
    limit.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &previous_limit_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit previous_limit_{};
  void (*previous_handler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("saving replaces the previous checkpoint and leaves only the target", "[io][atomic]") {
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  veil::io::save_safetensors(path, checkpoint(4, 1.0f));
  veil::io::save_safetensors(path, checkpoint(5, 2.0f));
  CHECK(veil::io::load_safetensors(path).get<float>("weight").to_vector() == std::vector<float>(5, 2.0f));
  CHECK(directory.listing() == std::vector<std::string>{"model.safetensors"});
  const auto permissions = std::filesystem::status(path).permissions();
  CHECK((permissions & std::filesystem::perms::owner_read) != std::filesystem::perms::none);
}

TEST_CASE("saving into a missing directory gives an IoError", "[io][atomic]") {
  ScratchDirectory directory;
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(directory / "missing/model.safetensors", checkpoint(4, 1.0f)),
                         veil::IoError, MessageContains("model.safetensors': creating a temporary file in"));
  CHECK(directory.listing().empty());
}

TEST_CASE("saving under a path whose parent is a regular file gives an IoError", "[io][atomic]") {
  ScratchDirectory directory;
  veil_test::write_bytes(directory / "not_a_directory", "x");
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(directory / "not_a_directory/model.safetensors", checkpoint(4, 1.0f)),
                         veil::IoError, MessageContains("Not a directory"));
  CHECK(directory.listing() == std::vector<std::string>{"not_a_directory"});
  CHECK(veil_test::read_bytes(directory / "not_a_directory") == "x");
}

TEST_CASE("saving over an existing directory gives an IoError and removes nothing", "[io][atomic]") {
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  std::filesystem::create_directory(path);
  veil_test::write_bytes(path / "inside", "kept");
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, checkpoint(4, 1.0f)), veil::IoError,
                         MessageContains("it is an existing directory"));
  CHECK(std::filesystem::is_directory(path));
  CHECK(veil_test::read_bytes(path / "inside") == "kept");
  CHECK(directory.listing() == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("saving into a read-only directory gives an IoError when permissions apply", "[io][atomic]") {
  if (::geteuid() == 0) {
    WARN("running as root: a read-only directory does not stop root; the other failure tests cover this path");
    return;
  }
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  veil::io::save_safetensors(path, checkpoint(4, 1.0f));
  const std::string before = veil_test::read_bytes(path);
  std::filesystem::permissions(directory.path(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  CHECK_THROWS_AS(veil::io::save_safetensors(path, checkpoint(8, 2.0f)), veil::IoError);
  std::filesystem::permissions(directory.path(), std::filesystem::perms::owner_all);
  CHECK(veil_test::read_bytes(path) == before);
  CHECK(directory.listing() == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("a write error part-way through a save leaves the previous checkpoint intact and no temporary file",
          "[io][atomic]") {
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  veil::io::save_safetensors(path, checkpoint(16, 1.0f), {{"step", "100"}});
  const std::string before = veil_test::read_bytes(path);
  REQUIRE(before.size() < 4096);
  {
    FileSizeLimit limit(4096);  // the new checkpoint needs about 400 kB
    REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, checkpoint(100'000, 2.0f), {{"step", "200"}}), veil::IoError,
                           MessageContains("writing the temporary file failed"));
  }
  CHECK(veil_test::read_bytes(path) == before);
  CHECK(directory.listing() == std::vector<std::string>{"model.safetensors"});
  CHECK(veil::io::load_safetensors(path).metadata().at("step") == "100");
  // With the limit gone the same save succeeds.
  veil::io::save_safetensors(path, checkpoint(100'000, 2.0f), {{"step", "200"}});
  CHECK(veil::io::load_safetensors(path).metadata().at("step") == "200");
}

TEST_CASE("the atomic writer removes its temporary file when the rename fails or it is abandoned", "[io][atomic]") {
  ScratchDirectory directory;
  const auto path = directory / "target.bin";
  SECTION("a directory appears at the target before commit") {
    veil::io::AtomicFileWriter writer(path, "test");
    writer.write("new", 3);
    std::filesystem::create_directory(path);
    veil_test::write_bytes(path / "inside", "kept");
    REQUIRE_THROWS_MATCHES(writer.commit(), veil::IoError, MessageContains("renaming the temporary file over it failed"));
    CHECK(directory.listing() == std::vector<std::string>{"target.bin"});
    CHECK(veil_test::read_bytes(path / "inside") == "kept");
  }
  SECTION("the writer goes out of scope without commit, as when an exception unwinds a save") {
    veil_test::write_bytes(path, "old");
    {
      veil::io::AtomicFileWriter writer(path, "test");
      writer.write("new", 3);
      CHECK(std::filesystem::exists(writer.temporary_path()));
      CHECK(directory.listing().size() == 2);
    }
    CHECK(directory.listing() == std::vector<std::string>{"target.bin"});
    CHECK(veil_test::read_bytes(path) == "old");
  }
  SECTION("a committed write replaces the target") {
    veil_test::write_bytes(path, "old");
    veil::io::AtomicFileWriter writer(path, "test");
    writer.write("new", 3);
    writer.commit();
    CHECK(veil_test::read_bytes(path) == "new");
    CHECK(directory.listing() == std::vector<std::string>{"target.bin"});
  }
}

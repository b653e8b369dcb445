// Atomic saves: a save that fails (missing or unusable directory, a directory in the way, a write
// error part-way through) throws IoError, leaves the previous checkpoint byte for byte as it was and
// leaves no temporary file behind. The failures are ones that also happen as root (CI runs tests
// as root, where a read-only directory stops nothing): RLIMIT_FSIZE stands in for a full disk.
// Several threads saving and loading at once only ever read complete files, old or new.
#include "io/io_test_support.hpp"
#include "support/message_contains.hpp"
#include "support/threads.hpp"

#include <csignal>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
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

TEST_CASE("saving over a FIFO or a device gives an IoError and leaves it in place", "[io][atomic]") {
  // A rename would swap the pipe or device for a plain file, as root even for /dev/null itself.
  // The device is reached through a symlink inside the scratch directory, so a regression could
  // only ever replace that link.
  ScratchDirectory directory;
  const auto fifo = directory / "pipe";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(fifo, checkpoint(4, 1.0f)), veil::IoError,
                         MessageContains("pipe': it is an existing FIFO, expected a regular file or a new path"));
  CHECK(std::filesystem::is_fifo(std::filesystem::symlink_status(fifo)));
  const auto device = directory / "null";
  std::filesystem::create_symlink("/dev/null", device);
  REQUIRE(std::filesystem::is_character_file(std::filesystem::status(device)));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(device, checkpoint(4, 1.0f)), veil::IoError,
                         MessageContains("null': it is an existing character device"));
  CHECK(std::filesystem::is_symlink(std::filesystem::symlink_status(device)));
  CHECK(directory.listing() == std::vector<std::string>{"null", "pipe"});
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

namespace {

/// Checkpoint i of writer t: sizes and values differ per (t, i), and the metadata names them,
/// so a file mixing two saves (a header from one, data from another, a short read) cannot pass
/// for a complete one.
struct WriterCheckpoint {
  veil::nn::StateDict<float> tensors;
  veil::io::Metadata metadata;
};

WriterCheckpoint writer_checkpoint(int t, int i) {
  const veil::Index size = 20'000 + 1'000 * t + 37 * (i + 1);
  std::vector<float> weight(static_cast<std::size_t>(size));
  for (std::size_t k = 0; k < weight.size(); ++k) weight[k] = static_cast<float>(10'000 * t + 100 * (i + 1) + k % 64);
  return {{{"weight", veil::from_vector<float>(weight, {size})},
           {"bias", veil::full<float>({3}, static_cast<float>(t) - 0.5f * static_cast<float>(i))}},
          {{"writer", std::to_string(t)}, {"iteration", std::to_string(i)}}};
}

/// Empty when `path` holds exactly the checkpoint its metadata names, written by `owner` (any
/// writer when owner < 0); otherwise what is wrong. Any IoError while loading is a fault too.
std::string torn_checkpoint_fault(const std::filesystem::path& path, int owner) {
  try {
    const auto file = veil::io::load_safetensors(path);
    const int t = std::stoi(file.metadata().at("writer")), i = std::stoi(file.metadata().at("iteration"));
    if (owner >= 0 && t != owner) return path.filename().string() + ": written by " + std::to_string(t);
    const auto expected = writer_checkpoint(t, i);
    for (const auto& [name, tensor] : expected.tensors)
      if (file.get<float>(name).to_vector() != tensor.to_vector())
        return path.filename().string() + ": " + name + " differs from checkpoint " + std::to_string(t) + "/" +
               std::to_string(i);
    return {};
  } catch (const std::exception& error) {
    return path.filename().string() + ": " + error.what();
  }
}

}  // namespace

TEST_CASE("4 threads saving and loading checkpoints 40 times each only ever read complete files",
          "[io][atomic][threads]") {
  constexpr int threads = 4, iterations = 40;
  ScratchDirectory directory;
  const auto shared = directory / "shared.safetensors";
  const auto own = [&directory](int t) { return directory / ("thread-" + std::to_string(t) + ".safetensors"); };
  // Every file exists before the threads start, so a failed load can only be a torn read.
  for (int t = 0; t < threads; ++t) {
    const auto first = writer_checkpoint(t, -1);
    veil::io::save_safetensors(own(t), first.tensors, first.metadata);
  }
  const auto initial = writer_checkpoint(0, -1);
  veil::io::save_safetensors(shared, initial.tensors, initial.metadata);

  std::vector<std::vector<std::string>> faults(threads);
  std::vector<int> loads(threads, 0);
  veil_test::run_together(threads, [&](int t) {
    auto& my_faults = faults[static_cast<std::size_t>(t)];
    const auto check = [&](const std::filesystem::path& path, int owner) {
      if (auto fault = torn_checkpoint_fault(path, owner); !fault.empty()) my_faults.push_back(std::move(fault));
      ++loads[static_cast<std::size_t>(t)];
    };
    for (int i = 0; i < iterations; ++i) {
      const auto checkpoint = writer_checkpoint(t, i);
      veil::io::save_safetensors(own(t), checkpoint.tensors, checkpoint.metadata);
      veil::io::save_safetensors(shared, checkpoint.tensors, checkpoint.metadata);  // replaced under the readers
      check(shared, -1);
      for (int other = 0; other < threads; ++other) check(own(other), other);
      // Only this thread writes its own file: it must hold this very iteration.
      if (veil::io::load_safetensors(own(t)).metadata().at("iteration") != std::to_string(i))
        my_faults.push_back(own(t).filename().string() + ": not iteration " + std::to_string(i));
    }
  });
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(faults[static_cast<std::size_t>(t)] == std::vector<std::string>{});
    CHECK(loads[static_cast<std::size_t>(t)] == iterations * (threads + 1));
  }
  // The last save of each thread is in place, and no temporary file was left behind.
  for (int t = 0; t < threads; ++t) CHECK(torn_checkpoint_fault(own(t), t).empty());
  CHECK(veil::io::load_safetensors(own(0)).metadata().at("iteration") == std::to_string(iterations - 1));
  CHECK(directory.listing() == std::vector<std::string>{"shared.safetensors", "thread-0.safetensors",
                                                        "thread-1.safetensors", "thread-2.safetensors",
                                                        "thread-3.safetensors"});
}

TEST_CASE("running out of space at any point of a save leaves the previous checkpoint and no temporary file",
          "[io][atomic]") {
  // The limits put the failure at the first byte, inside the header, inside the data and after
  // the first megabyte (past the writer's buffer, so in a direct write rather than the final flush).
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  veil::io::save_safetensors(path, checkpoint(16, 1.0f), {{"step", "100"}});
  const std::string before = veil_test::read_bytes(path);
  for (const rlim_t limit : {rlim_t{0}, rlim_t{1}, rlim_t{40}, rlim_t{4096}, (rlim_t{1} << 20) + 100}) {
    INFO("file size limit " << limit << " bytes");
    {
      FileSizeLimit full_disk(limit);
      REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, checkpoint(750'000, 2.0f), {{"step", "200"}}),
                             veil::IoError, MessageContains("(the previous file, if any, is unchanged)"));
    }
    CHECK(veil_test::read_bytes(path) == before);
    CHECK(directory.listing() == std::vector<std::string>{"model.safetensors"});
  }
  CHECK(veil::io::load_safetensors(path).metadata().at("step") == "100");
}

// AtomicFileWriter: writes a file so that readers see either the old file or the complete new
// one, never a torn checkpoint. Bytes go to a temporary file in the target's directory (a rename
// is only atomic within one file system); commit() flushes, fsyncs and renames it over the target,
// then fsyncs the directory so the rename itself survives a crash. Any failure throws IoError,
// removes the temporary file and leaves the previous target untouched.
//
// POSIX only (open, write, fsync, rename), like the rest of veil's supported platforms.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "veil/core/check.hpp"

namespace veil::io {

class AtomicFileWriter {
 public:
  /// Creates the temporary file next to `target`; `who` prefixes every error message.
  AtomicFileWriter(std::filesystem::path target, std::string who) : target_(std::move(target)), who_(std::move(who)) {
    VEIL_CHECK(!target_.filename().empty(), IoError, who_, ": '", target_.string(),
               "' names no file (expected a path ending in a file name)");
    std::error_code error;
    // Checked up front so that nothing is written at all; rename() below catches a later change.
    // Only a regular file may be replaced: renaming over a device, a FIFO or a socket would leave
    // a plain file where /dev/null or a pipe was.
    const std::filesystem::file_status existing = std::filesystem::status(target_, error);
    VEIL_CHECK(!std::filesystem::is_directory(existing), IoError, who_, ": cannot write '", target_.string(),
               "': it is an existing directory, expected a file path");
    VEIL_CHECK(!std::filesystem::exists(existing) || std::filesystem::is_regular_file(existing), IoError, who_,
               ": cannot write '", target_.string(), "': it is an existing ", special_file_kind(existing),
               ", expected a regular file or a new path");
    const std::filesystem::path directory = target_.has_parent_path() ? target_.parent_path() : ".";
    for (int attempt = 0; attempt < 100 && descriptor_ < 0; ++attempt) {
      // Built with concat: GCC 12 warns (-Wrestrict, a false positive) on "." + std::string&&.
      temporary_ = directory / veil::detail::concat('.', target_.filename().string(), ".tmp.", ::getpid(), '.',
                                                    next_counter());
      // 0666 before the umask, as for any file the program creates; O_EXCL never reuses a stranger's file.
      descriptor_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (descriptor_ < 0 && errno != EEXIST) break;
    }
    if (descriptor_ < 0)
      veil::detail::fail<IoError>(who_, ": cannot write '", target_.string(), "': creating a temporary file in '",
                            directory.string(), "' failed: ", std::strerror(errno));
    buffer_.reserve(buffer_capacity);
  }

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// Without a successful commit(), the temporary file is removed and the target never touched.
  ~AtomicFileWriter() { discard(); }

  void write(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    if (buffer_.size() + size > buffer_capacity) flush_buffer();
    if (size >= buffer_capacity) {
      write_fully(bytes, size);
    } else {
      buffer_.insert(buffer_.end(), bytes, bytes + size);
    }
  }

  /// Makes the written bytes the target's content, durably.
  void commit() {
    flush_buffer();
    if (::fsync(descriptor_) != 0) fail_with_errno("fsync of the temporary file failed");
    const int descriptor = descriptor_;
    descriptor_ = -1;
    if (::close(descriptor) != 0) fail_with_errno("closing the temporary file failed");
    if (::rename(temporary_.c_str(), target_.c_str()) != 0) fail_with_errno("renaming the temporary file over it failed");
    committed_ = true;
    // The file is in place; syncing the directory only makes the rename durable across a power
    // loss. Some file systems refuse fsync on a directory, which is not a failure of the save.
    const std::filesystem::path directory = target_.has_parent_path() ? target_.parent_path() : ".";
    const int directory_descriptor = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory_descriptor >= 0) {
      (void)::fsync(directory_descriptor);
      ::close(directory_descriptor);
    }
  }

  const std::filesystem::path& temporary_path() const { return temporary_; }

 private:
  static constexpr std::size_t buffer_capacity = std::size_t{1} << 20;

  static const char* special_file_kind(const std::filesystem::file_status& status) {
    switch (status.type()) {
      case std::filesystem::file_type::character: return "character device";
      case std::filesystem::file_type::block: return "block device";
      case std::filesystem::file_type::fifo: return "FIFO";
      case std::filesystem::file_type::socket: return "socket";
      default: return "file that is not a regular file";
    }
  }

  static unsigned next_counter() {
    static std::atomic<unsigned> counter{0};
    return counter++;
  }

  void flush_buffer() {
    write_fully(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

  void write_fully(const unsigned char* bytes, std::size_t size) {
    while (size > 0) {
      const ::ssize_t written = ::write(descriptor_, bytes, size);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) fail_with_errno("writing the temporary file failed");
      bytes += written;
      size -= static_cast<std::size_t>(written);
    }
  }

  [[noreturn]] void fail_with_errno(const char* what) {
    const int error_number = errno;
    discard();
    veil::detail::fail<IoError>(who_, ": cannot write '", target_.string(), "': ", what, ": ", std::strerror(error_number),
                          " (the previous file, if any, is unchanged)");
  }

  void discard() noexcept {
    if (descriptor_ >= 0) {
      ::close(descriptor_);
      descriptor_ = -1;
    }
    if (!committed_ && !temporary_.empty()) {
      ::unlink(temporary_.c_str());
      temporary_.clear();
    }
  }

  std::filesystem::path target_, temporary_;
  std::string who_;
  int descriptor_ = -1;
  bool committed_ = false;
  std::vector<unsigned char> buffer_;
};

}  // namespace veil::io

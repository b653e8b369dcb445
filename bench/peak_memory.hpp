// Peak resident memory of one benchmark case inside a longer-running process: Linux keeps the
// high-water mark in /proc/self/status (VmHWM) and resets it when "5" is written to
// /proc/self/clear_refs, so a case resets it before it starts and reads it when it ends.
#pragma once

#include <fstream>
#include <string>

#include <veil/tensor.hpp>

namespace bench {

/// Resets the resident-set high-water mark to the current resident set. Returns false where the
/// kernel does not allow it (the peak then covers the process so far). Empties veil's storage
/// cache first: blocks cached by earlier cases would otherwise count in this one's peak.
inline bool reset_peak_resident_memory() {
  veil::release_cached_storage();
  std::ofstream clear("/proc/self/clear_refs");
  if (!clear) return false;
  clear << "5";
  return static_cast<bool>(clear.flush());
}

/// The resident-set high-water mark in bytes (0 if unavailable).
inline double peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024.0;  // reported in kB
  return 0;
}

}  // namespace bench

// PyTorch-generated fixtures under tests/fixtures/, parsed once per test program.
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace veil_test {

/// tests/fixtures/<name>.json, keeping the file's key order; the generator script is make_<name>.py.
inline nlohmann::ordered_json load_fixture(const std::string& name) {
  const std::string path = std::string(VEIL_FIXTURE_DIR) + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path + "; regenerate it with make_" + name + ".py");
  return nlohmann::ordered_json::parse(in);
}

}  // namespace veil_test

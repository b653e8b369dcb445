// MessageContains: a Catch2 v2 exception matcher for REQUIRE_THROWS_MATCHES. Catch2 v2 only has
// Matchers::Message (whole-message equality) and a string Contains that does not accept an
// exception; veil's tests check the part of a message that names argument, expected and actual.
#pragma once

#include <exception>
#include <string>
#include <utility>

#include <catch2/catch.hpp>

namespace veil_test {

class MessageContains : public Catch::MatcherBase<std::exception> {
 public:
  explicit MessageContains(std::string part) : part_(std::move(part)) {}
  bool match(const std::exception& error) const override {
    return std::string(error.what()).find(part_) != std::string::npos;
  }
  std::string describe() const override { return "message contains \"" + part_ + "\""; }

 private:
  std::string part_;
};

}  // namespace veil_test

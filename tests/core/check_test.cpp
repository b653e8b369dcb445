#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <type_traits>

namespace {

int checked_half(int value) {
  VEIL_CHECK(value % 2 == 0, veil::ValueError, "checked_half: expected an even value, got ", value, " (",
             1.5, ", ", 'c', ")");
  return value / 2;
}

}  // namespace

TEST_CASE("VEIL_CHECK passes through when the condition holds", "[core][check]") {
  CHECK(checked_half(8) == 4);
  int evaluations = 0;
  VEIL_CHECK(++evaluations == 1, veil::ValueError, "never");
  CHECK(evaluations == 1);  // the condition is evaluated exactly once
}

TEST_CASE("VEIL_CHECK throws the given type with the message parts concatenated", "[core][check]") {
  CHECK_THROWS_AS(checked_half(7), veil::ValueError);
  CHECK_THROWS_WITH(checked_half(7), "checked_half: expected an even value, got 7 (1.5, c)");
  try {
    VEIL_CHECK(false, veil::ShapeError, "shape ", veil::to_string({2, 3}), " vs ", veil::Index{4});
    FAIL("no exception");
  } catch (const veil::ShapeError& e) {
    CHECK(std::string(e.what()) == "shape [2, 3] vs 4");
  }
}

TEST_CASE("VEIL_CHECK only builds the message when it fails", "[core][check]") {
  int message_builds = 0;
  const auto part = [&] {
    ++message_builds;
    return "x";
  };
  VEIL_CHECK(true, veil::ValueError, part());
  CHECK(message_builds == 0);
  CHECK_THROWS_AS(([&] { VEIL_CHECK(false, veil::ValueError, part()); }()), veil::ValueError);
  CHECK(message_builds == 1);
}

TEST_CASE("VEIL_CHECK works as a single statement in an unbraced if/else", "[core][check]") {
  const auto pick = [](bool strict, int value) {
    if (strict)
      VEIL_CHECK(value > 0, veil::ValueError, "strict");
    else
      return -1;
    return value;
  };
  CHECK(pick(false, -5) == -1);
  CHECK(pick(true, 3) == 3);
  CHECK_THROWS_WITH(pick(true, -5), "strict");
}

TEMPLATE_TEST_CASE("every veil error is catchable as veil::Error and std::runtime_error", "[core][check]",
                   veil::ShapeError, veil::ValueError, veil::MaskError, veil::IoError, veil::AutogradError) {
  STATIC_REQUIRE(std::is_base_of_v<veil::Error, TestType>);
  STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, veil::Error>);
  try {
    VEIL_CHECK(1 + 1 == 3, TestType, "argument ", "x", ": expected ", 3, ", got ", 2);
    FAIL("no exception");
  } catch (const veil::Error& e) {
    CHECK(std::string(e.what()) == "argument x: expected 3, got 2");
    CHECK(dynamic_cast<const TestType*>(&e) != nullptr);
  }
  CHECK_THROWS_AS(veil::detail::fail<TestType>("direct"), std::runtime_error);
}

TEST_CASE("the error types are distinct: one is not caught as another", "[core][check]") {
  const auto throw_mask = [] { throw veil::MaskError("m"); };
  bool caught_as_shape = false, caught_as_mask = false;
  try {
    try {
      throw_mask();
    } catch (const veil::ShapeError&) {
      caught_as_shape = true;
    }
  } catch (const veil::MaskError&) {
    caught_as_mask = true;
  }
  CHECK_FALSE(caught_as_shape);
  CHECK(caught_as_mask);
}

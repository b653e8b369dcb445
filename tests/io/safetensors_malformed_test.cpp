// Malformed safetensors files: each one gives veil::IoError naming the file and what is wrong,
// before any tensor memory is allocated, and a model that tries to load one keeps its parameters.
// The cases follow the safetensors reference reader's tests and its attacks list, plus what that
// reader misses (duplicate keys) and what a C++ reader must not trip over (huge lengths, overflow).
#include "io/io_test_support.hpp"
#include "support/message_contains.hpp"

#include <cstdint>
#include <string>
#include <vector>

using veil_test::MessageContains;
using veil_test::safetensors_bytes;
using veil_test::ScratchDirectory;

namespace {

struct MalformedCase {
  const char* description;
  std::string bytes;
  const char* expected;  // a part of the message
};

const std::string eight_bytes = std::string(8, '\x01');
const std::string one_entry = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return "\"" + name + R"(":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

std::vector<MalformedCase> malformed_cases() {
  using veil_test::length_prefix;
  std::vector<MalformedCase> cases = {
      {"an empty file", "", "the file is 0 bytes, too small for the 8-byte header length"},
      {"a truncated header length", std::string("\x10\0\0\0\0", 5), "the file is 5 bytes, too small"},
      {"a header length past the end of an 8-byte file", length_prefix(60),
       "header length 60 runs past the end of the file (0 bytes follow the length)"},
      {"a header length one byte longer than the file", length_prefix(one_entry.size() + 9) + one_entry + eight_bytes,
       "runs past the end of the file"},
      {"a huge header length", std::string(8, '\xff') + "{}", "header length 18446744073709551615 exceeds the limit of 100000000 bytes"},
      {"a header length over the cap", length_prefix(200'000'000) + "{}", "header length 200000000 exceeds the limit"},
      {"a header length of zero", length_prefix(0), "is too small for a JSON object"},
      {"a header of one brace", safetensors_bytes("{"), "header length 1 is too small for a JSON object"},
      {"a header cut short", safetensors_bytes(R"({"w":{"dtype")"), "the header is not valid JSON"},
      {"invalid JSON", safetensors_bytes(R"({"w": })"), "the header is not valid JSON"},
      {"text after the JSON object", safetensors_bytes("{} x"), "the header is not valid JSON"},
      {"NUL padding instead of spaces", safetensors_bytes(std::string("{}\0\0\0\0\0\0", 8)),
       "the header holds a NUL byte at byte 2"},
      {"a NUL byte hiding a second object", safetensors_bytes(std::string("{}\0", 3) + one_entry, eight_bytes),
       "the header holds a NUL byte at byte 2"},
      {"a non-UTF-8 byte in the header", safetensors_bytes("{\"w\xff\":1}"), "the header is not valid UTF-8 (byte 3 of the header)"},
      {"an overlong UTF-8 sequence", safetensors_bytes("{\"\xc0\xaf\":1}"), "the header is not valid UTF-8"},
      {"a UTF-16 surrogate encoded in UTF-8", safetensors_bytes("{\"\xed\xa0\x80\":1}"), "the header is not valid UTF-8"},
      {"a header that is an array", safetensors_bytes("[]"), "the header must be a JSON object, got []"},
      {"a duplicate tensor name",
       safetensors_bytes("{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[1]", "[4,8]") + "}", eight_bytes),
       "duplicate key \"w\" in the header"},
      {"a duplicate field in an entry",
       safetensors_bytes(R"({"w":{"dtype":"F32","dtype":"I64","shape":[2],"data_offsets":[0,8]}})", eight_bytes),
       "duplicate key \"dtype\" in entry \"w\""},
      {"a duplicate metadata key", safetensors_bytes(R"({"__metadata__":{"a":"1","a":"2"}})"),
       "duplicate key \"a\" in entry \"__metadata__\""},
      {"an entry that is not an object", safetensors_bytes(R"({"w":3})"), "entry \"w\": expected an object"},
      {"an unknown dtype", safetensors_bytes("{" + entry("w", "F8", "[2]", "[0,8]") + "}", eight_bytes),
       "entry \"w\": unknown dtype \"F8\" (expected one of BOOL, U8, I32, I64, F16, BF16, F32, F64)"},
      {"a lower-case dtype", safetensors_bytes("{" + entry("w", "f32", "[2]", "[0,8]") + "}", eight_bytes),
       "unknown dtype \"f32\""},
      {"a dtype that is not a string",
       safetensors_bytes(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight_bytes), "dtype must be a string, got 4"},
      {"a negative shape entry", safetensors_bytes("{" + entry("w", "F32", "[-2]", "[0,8]") + "}", eight_bytes),
       "entry \"w\": shape[0]: expected a non-negative integer, got -2"},
      {"a non-integer shape entry", safetensors_bytes("{" + entry("w", "F32", "[2.5]", "[0,8]") + "}", eight_bytes),
       "shape[0]: expected a non-negative integer, got 2.5"},
      {"a string shape entry", safetensors_bytes("{" + entry("w", "F32", "[\"2\"]", "[0,8]") + "}", eight_bytes),
       "shape[0]: expected a non-negative integer, got \"2\""},
      {"a shape that is not an array", safetensors_bytes("{" + entry("w", "F32", "2", "[0,8]") + "}", eight_bytes),
       "shape must be an array of non-negative integers, got 2"},
      {"a shape entry above 2^63 - 1",
       safetensors_bytes("{" + entry("w", "F32", "[2,18446744073709551614]", "[0,8]") + "}", eight_bytes),
       "shape[1]: expected at most 9223372036854775807, got 18446744073709551614"},
      {"a shape whose element count overflows",
       safetensors_bytes("{" + entry("w", "F32", "[4294967296,4294967296]", "[0,8]") + "}", eight_bytes),
       "overflows: the element count does not fit in 64 bits"},
      {"a shape whose element count overflows before a zero extent",
       safetensors_bytes("{" + entry("w", "F32", "[4294967296,4294967296,0]", "[0,0]") + "}"),
       "overflows: the element count does not fit in 64 bits"},
      {"a shape whose byte count overflows",
       safetensors_bytes("{" + entry("w", "F64", "[4611686018427387904]", "[0,8]") + "}", eight_bytes),
       "overflows: the byte count does not fit in 64 bits"},
      {"offsets that do not match shape and dtype",
       safetensors_bytes("{" + entry("w", "I32", "[2,2]", "[0,4]") + "}", std::string(4, '\0')),
       "entry \"w\": data_offsets [0, 4] span 4 bytes, but shape [2, 2] of I32 needs 16"},
      {"offsets that end before they begin", safetensors_bytes("{" + entry("w", "F32", "[0]", "[8,0]") + "}", eight_bytes),
       "data_offsets [8, 0] end before they begin"},
      {"offsets with one number", safetensors_bytes("{" + entry("w", "F32", "[2]", "[8]") + "}", eight_bytes),
       "data_offsets must be an array [begin, end], got [8]"},
      {"a negative offset", safetensors_bytes("{" + entry("w", "F32", "[0]", "[-8,-8]") + "}"),
       "data_offsets[0]: expected a non-negative integer, got -8"},
      {"overlapping offsets",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[1]", "[4,8]") + "}", eight_bytes),
       "entry \"b\": data_offsets [4, 8] overlap entry \"a\", which ends at 8"},
      {"many entries sharing the same bytes (the JSON attack)", [] {
         std::string header = "{";
         for (int i = 0; i < 10; ++i) {
           if (i > 0) header += ',';
           header += entry(std::string(1, 't') += std::to_string(i), "F32", "[4]", "[0,16]");
         }
         return safetensors_bytes(header + "}", std::string(16, '\0'));
       }(),
       "overlap entry \"t"},
      {"a gap between entries",
       safetensors_bytes("{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}",
                         std::string(12, '\0')),
       "entry \"b\": data_offsets begin at 8, expected 4 (a gap of 4 bytes that belong to no entry)"},
      {"a first entry not starting at 0", safetensors_bytes("{" + entry("w", "F32", "[1]", "[4,8]") + "}", eight_bytes),
       "data_offsets begin at 4, expected 0"},
      {"offsets past the end of the file", safetensors_bytes(one_entry, std::string(4, '\0')),
       "entry \"w\": data_offsets [0, 8] run past the end of the data section (4 bytes)"},
      {"a data section missing its last byte", safetensors_bytes(one_entry, std::string(7, '\0')), "run past the end"},
      {"trailing bytes after the last entry", safetensors_bytes(one_entry, eight_bytes + "abc"),
       "trailing bytes: the entries cover 8 bytes, but the data section holds 11"},
      {"data but no entries", safetensors_bytes("{}", "x"), "trailing bytes: the entries cover 0 bytes"},
      {"a metadata value that is not a string", safetensors_bytes(R"({"__metadata__":{"k":1}})"),
       "__metadata__ value of \"k\" must be a string, got 1"},
      {"a metadata value that is an object", safetensors_bytes(R"({"__metadata__":{"k":{"x":"y"}}})"),
       "__metadata__ value of \"k\" must be a string"},
      {"metadata that is not an object", safetensors_bytes(R"({"__metadata__":["a"]})"), "__metadata__ must be an object of strings"},
      {"metadata that is null", safetensors_bytes(R"({"__metadata__":null})"), "__metadata__ must be an object of strings"},
      {"an entry missing data_offsets", safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", eight_bytes),
       "entry \"w\": missing field \"data_offsets\" (expected exactly dtype, shape, data_offsets)"},
      {"an entry missing its dtype", safetensors_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight_bytes),
       "missing field \"dtype\""},
      {"an entry with an extra field",
       safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", eight_bytes),
       "entry \"w\": unknown field \"extra\""},
      {"a BOOL entry holding a byte other than 0 or 1",
       safetensors_bytes("{" + entry("b", "BOOL", "[3]", "[0,3]") + "}", std::string("\x01\x02\x00", 3)),
       "entry \"b\": BOOL element 1 is byte 2, expected 0 or 1"},
      {"a sub-byte dtype", safetensors_bytes("{" + entry("w", "F4", "[16]", "[0,8]") + "}", eight_bytes),
       "entry \"w\": unknown dtype \"F4\""},
      {"an 8-bit float dtype veil does not read", safetensors_bytes("{" + entry("w", "F8_E4M3", "[8]", "[0,8]") + "}", eight_bytes),
       "entry \"w\": unknown dtype \"F8_E4M3\""},
      {"a boolean shape entry", safetensors_bytes("{" + entry("w", "F32", "[true]", "[0,4]") + "}", std::string(4, '\0')),
       "shape[0]: expected a non-negative integer, got true"},
      {"a null shape", safetensors_bytes("{" + entry("w", "F32", "null", "[0,8]") + "}", eight_bytes),
       "shape must be an array of non-negative integers, got null"},
      {"an offset written as a float", safetensors_bytes("{" + entry("w", "F32", "[2]", "[0,8.0]") + "}", eight_bytes),
       "entry \"w\": data_offsets[1]: expected a non-negative integer, got 8.0"},
      {"an offset beyond 2^64 - 1",
       safetensors_bytes("{" + entry("w", "F32", "[2]", "[0,18446744073709551616]") + "}", eight_bytes),
       "data_offsets[1]: expected a non-negative integer, got 1.8446744073709552e+19"},
      {"a header that is a JSON string", safetensors_bytes(R"("weights")"), "the header must be a JSON object, got \"weights\""},
      {"a header of spaces only", safetensors_bytes("        "), "the header is not valid JSON"},
      {"a tensor entry under the name __metadata__",
       safetensors_bytes(R"({"__metadata__":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight_bytes),
       "__metadata__ value of \"data_offsets\" must be a string, got [0,8]"},
      {"a header nested 100 deep", safetensors_bytes(R"({"w":)" + std::string(100, '[') + std::string(100, ']') + "}"),
       "the header nests deeper than 16 levels"},
  };
  return cases;
}

}  // namespace

TEST_CASE("each malformed file gives an IoError that names the file and the fault", "[io][safetensors][malformed]") {
  ScratchDirectory directory;
  const auto cases = malformed_cases();
  REQUIRE(cases.size() >= 25);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& malformed = cases[i];
    INFO("case " << i << ": " << malformed.description);
    const auto path = directory / ("bad_" + std::to_string(i) + ".safetensors");
    veil_test::write_bytes(path, malformed.bytes);
    CHECK_THROWS_MATCHES(veil::io::load_safetensors(path), veil::IoError, MessageContains(malformed.expected));
    CHECK_THROWS_MATCHES(veil::io::load_safetensors(path), veil::IoError, MessageContains(path.string()));
  }
}

TEST_CASE("a model keeps its parameters when loading a malformed file fails", "[io][safetensors][malformed]") {
  ScratchDirectory directory;
  veil_test::TinyModel model(7);
  const auto weight = model.weight.to_vector();
  const auto bias = model.bias.to_vector();
  for (const auto& malformed : malformed_cases()) {
    INFO(malformed.description);
    const auto path = directory / "bad.safetensors";
    veil_test::write_bytes(path, malformed.bytes);
    CHECK_THROWS_AS(model.load_state_dict(veil::io::load_safetensors(path)), veil::IoError);
    CHECK(model.weight.to_vector() == weight);
    CHECK(model.bias.to_vector() == bias);
  }
}

TEST_CASE("files the format allows at its edges load", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto load = [&](const std::string& bytes) {
    const auto path = directory / "edge.safetensors";
    veil_test::write_bytes(path, bytes);
    return veil::io::load_safetensors(path);
  };
  CHECK(load(safetensors_bytes("{}")).size() == 0);
  CHECK(load(safetensors_bytes("{}      ")).size() == 0);
  CHECK(load(safetensors_bytes("  \n{}  ")).size() == 0);  // leading whitespace: the reference accepts it too
  CHECK(load(safetensors_bytes(R"({"__metadata__":{}})")).metadata().empty());
  const auto empty = load(safetensors_bytes("{" + entry("e", "F32", "[2,0]", "[0,0]") + "}"));
  CHECK(empty.get<float>("e").shape() == veil::Shape{2, 0});
  const auto scalar = load(safetensors_bytes("{" + entry("s", "F64", "[]", "[0,8]") + "}", std::string("\0\0\0\0\0\0\xf0\x3f", 8)));
  CHECK(scalar.get<double>("s").item() == 1.0);
  // Entries may be listed in any order; only their offsets place them.
  const auto reordered = load(safetensors_bytes(
      "{" + entry("second", "U8", "[1]", "[1,2]") + "," + entry("first", "U8", "[1]", "[0,1]") + "}", "\x05\x06"));
  CHECK(reordered.get<std::int64_t>("first").item() == 5);
  CHECK(reordered.get<std::int64_t>("second").item() == 6);
  // Zero-size entries at the same offset claim no bytes, so they do not overlap.
  CHECK(load(safetensors_bytes("{" + entry("a", "F32", "[0]", "[0,0]") + "," + entry("b", "I64", "[0,3]", "[0,0]") + "}"))
            .size() == 2);
}

TEST_CASE("loading a path that is missing or not a file gives an IoError", "[io][safetensors][malformed]") {
  ScratchDirectory directory;
  REQUIRE_THROWS_MATCHES(veil::io::load_safetensors(directory / "missing.safetensors"), veil::IoError,
                         MessageContains("missing.safetensors': cannot open: no such file"));
  REQUIRE_THROWS_MATCHES(veil::io::load_safetensors(directory.path()), veil::IoError,
                         MessageContains("cannot open: not a regular file"));
}

TEST_CASE("the header length limit is configurable", "[io][safetensors][malformed]") {
  ScratchDirectory directory;
  const auto path = directory / "limit.safetensors";
  veil_test::write_bytes(path, safetensors_bytes(one_entry, eight_bytes));
  CHECK(veil::io::load_safetensors(path).size() == 1);
  REQUIRE_THROWS_MATCHES(veil::io::load_safetensors(path, {.max_header_bytes = 16}), veil::IoError,
                         MessageContains("exceeds the limit of 16 bytes"));
}

TEST_CASE("every truncation and many byte corruptions of a valid file give an IoError or a valid file, never a crash",
          "[io][safetensors][malformed]") {
  ScratchDirectory directory;
  const auto valid_path = directory / "valid.safetensors";
  veil::io::save_safetensors(valid_path,
                             {veil::io::SafetensorsEntry::from_tensor("weight", veil::from_vector<float>({1, 2, 3, 4}, {2, 2})),
                              veil::io::SafetensorsEntry::from_tensor("half", veil::from_vector<float>({1, 2}), veil::io::Dtype::F16),
                              veil::io::SafetensorsEntry::from_tensor("step", veil::scalar<std::int64_t>(3)),
                              veil::io::SafetensorsEntry::from_tensor("mask", veil::from_vector<bool>({true, false}))},
                             {{"format", "pt"}});
  const std::string valid = veil_test::read_bytes(valid_path);
  const auto path = directory / "mutated.safetensors";

  for (std::size_t length = 0; length < valid.size(); ++length) {
    INFO("truncated to " << length << " bytes");
    veil_test::write_bytes(path, valid.substr(0, length));
    CHECK_THROWS_AS(veil::io::load_safetensors(path), veil::IoError);
  }

  std::size_t loaded = 0, refused = 0;
  for (std::size_t position = 0; position < valid.size(); ++position) {
    for (char replacement : {'\0', '\xff', '"', '[', '9', ' ', '\x80', '-'}) {
      if (valid[position] == replacement) continue;
      std::string mutated = valid;
      mutated[position] = replacement;
      veil_test::write_bytes(path, mutated);
      INFO("byte " << position << " set to " << static_cast<int>(static_cast<unsigned char>(replacement)));
      try {
        const auto file = veil::io::load_safetensors(path);
        // A corruption inside the data section still loads; its values then convert without fault.
        (void)file.to_state_dict<float>({.integer_entries = veil::io::IntegerEntries::convert});
        ++loaded;
      } catch (const veil::IoError&) {
        ++refused;
      }
    }
  }
  CHECK(loaded > 0);
  CHECK(refused > 0);
}

// safetensors: round trips for every dtype, the byte layout, half/bfloat16 rounding, conversions
// into state dicts and models, and files exchanged with Python (tests/fixtures, written by
// make_safetensors_fixtures.py with torch's conversions and an independent reader and writer).
#include "io/io_test_support.hpp"
#include "support/message_contains.hpp"

#include <veil/nn.hpp>

#include <nlohmann/json.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

using veil::Shape;
using veil::Tensor;
using veil::io::Dtype;
using veil::io::SafetensorsEntry;
using veil_test::MessageContains;
using veil_test::ScratchDirectory;

namespace {

template <class T>
Tensor<T> make(const Shape& shape, const std::vector<T>& values) {
  Tensor<T> out = Tensor<T>::empty(shape);
  REQUIRE(static_cast<std::size_t>(out.numel()) == values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out.data()[i] = values[i];
  return out;
}

float float_from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }
double double_from_bits(std::uint64_t bits) { return std::bit_cast<double>(bits); }

/// Same shape and the same bytes element by element (so NaN payloads and -0 count).
template <class T>
void require_identical(const Tensor<T>& actual, const Tensor<T>& expected) {
  REQUIRE(actual.shape() == expected.shape());
  const auto a = actual.to_vector();
  const auto b = expected.to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) {
    if constexpr (std::is_same_v<T, bool>) {
      CHECK(a[i] == b[i]);
    } else {
      const T x = a[i], y = b[i];
      CHECK(std::memcmp(&x, &y, sizeof(T)) == 0);
    }
  }
}

/// Saves `tensor` as `dtype` under "t", loads it back as T and checks it is bit-identical.
template <class T>
void check_round_trip(const Tensor<T>& tensor, std::optional<Dtype> store_as = std::nullopt) {
  ScratchDirectory directory;
  const auto path = directory / "round_trip.safetensors";
  veil::io::save_safetensors(path, veil::nn::StateDict<T>{{"t", tensor}}, {}, store_as);
  const auto file = veil::io::load_safetensors(path);
  REQUIRE(file.size() == 1);
  CHECK(file.entry("t").dtype == store_as.value_or(veil::io::dtype_of<T>()));
  CHECK(file.entry("t").shape == tensor.shape());
  require_identical(file.get<T>("t"), tensor);
}

const std::vector<float> float_specials = {
    0.0f, -0.0f, 1.0f, -1.5f, 3.14159274f, std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest(),
    std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::infinity(),
    -std::numeric_limits<float>::infinity(), float_from_bits(0x7FC00000u), float_from_bits(0xFFC01234u),
    float_from_bits(0x7F800001u) /* signalling NaN */};

}  // namespace

TEST_CASE("every dtype round trips bit for bit including 0-d and empty tensors", "[io][safetensors]") {
  const std::vector<Shape> empty_shapes = {{0}, {2, 0, 3}, {0, 0}};
  SECTION("F32") {
    check_round_trip(make<float>({14}, float_specials));
    check_round_trip(make<float>({2, 7}, float_specials));
    check_round_trip(make<float>({}, {-0.0f}));
    for (const auto& shape : empty_shapes) check_round_trip(make<float>(shape, {}));
  }
  SECTION("F64") {
    const std::vector<double> values = {0.0, -0.0, 1.0 / 3.0, std::numeric_limits<double>::max(),
                                        std::numeric_limits<double>::denorm_min(), -std::numeric_limits<double>::infinity(),
                                        double_from_bits(0x7FF8000000000ABCull), double_from_bits(0xFFF0000000000001ull)};
    check_round_trip(make<double>({2, 4}, values));
    check_round_trip(make<double>({}, {1e300}));
    for (const auto& shape : empty_shapes) check_round_trip(make<double>(shape, {}));
  }
  SECTION("F16 from float tensors holding values a half represents exactly") {
    const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, -65504.0f, std::ldexp(1.0f, -24),
                                       std::ldexp(1.0f, -14), std::ldexp(1023.0f, -24), 1.0009765625f,
                                       std::numeric_limits<float>::infinity(), float_from_bits(0x7FC00000u),
                                       float_from_bits(0xFFE00000u)};
    check_round_trip(make<float>({13}, values), Dtype::F16);
    check_round_trip(make<float>({}, {0.5f}), Dtype::F16);
    for (const auto& shape : empty_shapes) check_round_trip(make<float>(shape, {}), Dtype::F16);
    std::vector<double> as_double(values.begin(), values.end());
    check_round_trip(make<double>({13}, as_double), Dtype::F16);
  }
  SECTION("BF16 from float tensors holding values a bfloat16 represents exactly") {
    std::vector<float> values;
    for (float value : float_specials) values.push_back(float_from_bits(std::bit_cast<std::uint32_t>(value) & 0xFFFF0000u));
    values.pop_back();  // a signalling NaN: writing it to a 16-bit format quiets it, as IEEE conversions do
    values.push_back(float_from_bits(0x7FC10000u));  // a quiet NaN with a payload bfloat16 holds
    values.push_back(float_from_bits(0x00010000u));  // a bfloat16 subnormal
    check_round_trip(make<float>({static_cast<veil::Index>(values.size())}, values), Dtype::BF16);
    check_round_trip(make<float>({}, {-3.0f}), Dtype::BF16);
    for (const auto& shape : empty_shapes) check_round_trip(make<float>(shape, {}), Dtype::BF16);
  }
  SECTION("I64") {
    check_round_trip(make<std::int64_t>({2, 2}, {0, -1, std::numeric_limits<std::int64_t>::min(),
                                                 std::numeric_limits<std::int64_t>::max()}));
    check_round_trip(make<std::int64_t>({}, {42}));
    for (const auto& shape : empty_shapes) check_round_trip(make<std::int64_t>(shape, {}));
  }
  SECTION("I32 and U8") {
    check_round_trip(make<std::int32_t>({3}, {std::numeric_limits<std::int32_t>::min(), 0, 2147483647}));
    check_round_trip(make<std::int32_t>({}, {-9}));
    check_round_trip(make<std::uint8_t>({4}, {0, 1, 128, 255}));
    check_round_trip(make<std::uint8_t>({0, 5}, {}));
  }
  SECTION("BOOL") {
    check_round_trip(make<bool>({2, 3}, {true, false, false, true, true, false}));
    check_round_trip(make<bool>({}, {true}));
    for (const auto& shape : empty_shapes) check_round_trip(make<bool>(shape, {}));
  }
}

TEST_CASE("metadata and a mixed-dtype checkpoint round trip", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "mixed.safetensors";
  const veil::io::Metadata metadata = {{"format", "pt"}, {"step", "1200"}, {"note", "UTF-8 \xC3\xA9t\xC3\xA9 \"quoted\"\n"},
                                       {"", "empty key"}};
  const auto weight = make<float>({2, 2}, {1.0f, 2.0f, 3.0f, 4.0f});
  const std::vector<SafetensorsEntry> entries = {
      SafetensorsEntry::from_tensor("weight", weight), SafetensorsEntry::from_tensor("weight_half", weight, Dtype::F16),
      SafetensorsEntry::from_tensor("step", make<std::int64_t>({}, {1200})),
      SafetensorsEntry::from_tensor("mask", make<bool>({3}, {true, false, true}))};
  veil::io::save_safetensors(path, entries, metadata);

  const auto file = veil::io::load_safetensors(path);
  CHECK(file.metadata() == metadata);
  REQUIRE(file.size() == 4);
  for (const auto& entry : entries) {
    CHECK(file.entry(entry.name).dtype == entry.dtype);
    CHECK(file.entry(entry.name).shape == entry.shape);
    CHECK(file.entry(entry.name).bytes == entry.bytes);
  }
  CHECK(file.get<std::int64_t>("step").item() == 1200);
  CHECK(file.get<bool>("mask").to_vector() == std::vector<bool>{true, false, true});
  CHECK(file.get<float>("weight_half").to_vector() == weight.to_vector());

  SECTION("a loaded file saved again gives the same bytes") {
    const auto copy = directory / "copy.safetensors";
    veil::io::save_safetensors(copy, file);
    CHECK(veil_test::read_bytes(copy) == veil_test::read_bytes(path));
  }
}

TEST_CASE("the byte layout is the documented one", "[io][safetensors]") {
  // 8-byte little-endian header length, compact JSON with __metadata__ first and entries by element
  // size then name, spaces up to a multiple of 8, then the entries' bytes back to back.
  ScratchDirectory directory;
  const auto path = directory / "tiny.safetensors";
  veil::io::save_safetensors(path,
                             {SafetensorsEntry::from_tensor("a", make<float>({2}, {1.0f, -2.0f})),
                              SafetensorsEntry::from_tensor("n", make<std::int64_t>({}, {258}))},
                             {{"k", "v"}});
  const std::string header =
      R"({"__metadata__":{"k":"v"},"n":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})"
      "    ";  // 132 bytes of JSON + 4 spaces = 136
  REQUIRE(header.size() == 136);
  const std::string length = std::string("\x88\0\0\0\0\0\0\0", 8);
  const std::string data = std::string("\x02\x01\0\0\0\0\0\0", 8)   // I64 258
                           + std::string("\0\0\x80\x3f", 4)         // F32 1.0
                           + std::string("\0\0\0\xc0", 4);          // F32 -2.0
  CHECK(veil_test::read_bytes(path) == length + header + data);
  CHECK((8 + header.size()) % 8 == 0);

  SECTION("an empty state dict is the header {} padded to 8 bytes") {
    const auto empty = directory / "empty.safetensors";
    veil::io::save_safetensors(empty, veil::nn::StateDict<float>{});
    CHECK(veil_test::read_bytes(empty) == std::string("\x08\0\0\0\0\0\0\0", 8) + "{}      ");
    CHECK(veil::io::load_safetensors(empty).size() == 0);
  }
  SECTION("each entry starts at a file offset that is a multiple of its element size") {
    const auto aligned = directory / "aligned.safetensors";
    veil::io::save_safetensors(aligned, {SafetensorsEntry::from_tensor("b", make<bool>({3}, {true, true, false})),
                                         SafetensorsEntry::from_tensor("h", make<float>({3}, {1, 2, 3}), Dtype::BF16),
                                         SafetensorsEntry::from_tensor("f", make<float>({1}, {1})),
                                         SafetensorsEntry::from_tensor("d", make<double>({2}, {1, 2}))});
    const std::string bytes = veil_test::read_bytes(aligned);
    std::uint64_t header_length = 0;
    std::memcpy(&header_length, bytes.data(), 8);
    const auto header_json = nlohmann::json::parse(bytes.substr(8, header_length));
    for (const auto& [name, size] : std::vector<std::pair<std::string, int>>{{"d", 8}, {"f", 4}, {"h", 2}, {"b", 1}})
      CHECK((8 + header_length + header_json[name]["data_offsets"][0].get<std::uint64_t>()) % size == 0);
  }
}

TEST_CASE("half and bfloat16 conversions round to nearest even and decode exactly", "[io][dtype]") {
  using veil::io::bfloat16_bits_to_double;
  using veil::io::float_to_bfloat16_bits;
  using veil::io::float_to_half_bits;
  using veil::io::half_bits_to_double;
  SECTION("every half and every bfloat16 decodes and re-encodes to itself") {
    for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
      const auto half = static_cast<std::uint16_t>(bits);
      const double value = half_bits_to_double(half);
      if (std::isnan(value)) {
        CHECK((float_to_half_bits(value) | 0x0200) == (half | 0x0200));  // the quiet bit may be set
      } else {
        CHECK(float_to_half_bits(value) == half);
      }
      const double bvalue = bfloat16_bits_to_double(half);
      CHECK((std::isnan(bvalue) || static_cast<double>(static_cast<float>(bvalue)) == bvalue));
      if (std::isnan(bvalue)) {
        CHECK((float_to_bfloat16_bits(bvalue) | 0x0040) == (half | 0x0040));
      } else {
        CHECK(float_to_bfloat16_bits(bvalue) == half);
        // bfloat16 is the top half of a float
        CHECK(std::bit_cast<std::uint32_t>(static_cast<float>(bvalue)) == bits << 16);
      }
    }
  }
  SECTION("half rounding at ties, subnormals and overflow") {
    CHECK(float_to_half_bits(1.0 + std::ldexp(1.0, -11)) == 0x3C00);      // tie: stays even
    CHECK(float_to_half_bits(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3C02);  // tie: up to even
    CHECK(float_to_half_bits(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3C01);  // above the tie
    CHECK(float_to_half_bits(65504.0) == 0x7BFF);
    CHECK(float_to_half_bits(65519.0) == 0x7BFF);
    CHECK(float_to_half_bits(65520.0) == 0x7C00);  // the tie above the largest half goes to infinity
    CHECK(float_to_half_bits(-1e30) == 0xFC00);
    CHECK(float_to_half_bits(std::ldexp(1.0, -24)) == 0x0001);
    CHECK(float_to_half_bits(std::ldexp(1.0, -25)) == 0x0000);  // tie with 0: even
    CHECK(float_to_half_bits(std::ldexp(3.0, -25)) == 0x0002);  // tie between 1 and 2 ulps: even
    CHECK(float_to_half_bits(std::ldexp(1.0, -25) * 1.0000001) == 0x0001);
    CHECK(float_to_half_bits(std::ldexp(1023.5, -24)) == 0x0400);  // the largest subnormal rounds up to the smallest normal
    CHECK(float_to_half_bits(-0.0) == 0x8000);
    CHECK(float_to_half_bits(1e-300) == 0x0000);
    CHECK(half_bits_to_double(0x0001) == std::ldexp(1.0, -24));
    CHECK(half_bits_to_double(0xC000) == -2.0);
  }
  SECTION("bfloat16 rounding at ties and overflow") {
    CHECK(float_to_bfloat16_bits(1.0 + std::ldexp(1.0, -8)) == 0x3F80);
    CHECK(float_to_bfloat16_bits(1.0 + 3 * std::ldexp(1.0, -8)) == 0x3F82);
    CHECK(float_to_bfloat16_bits(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)) == 0x3F81);
    CHECK(float_to_bfloat16_bits(3.4e38) == 0x7F80);  // above the largest bfloat16 plus half an ulp
    CHECK(float_to_bfloat16_bits(1e-40) == 0x0001);   // a subnormal: 1e-40 is about 1.09 ulps of 2^-133
    CHECK(float_to_bfloat16_bits(std::numeric_limits<double>::infinity()) == 0x7F80);
    CHECK(std::isnan(bfloat16_bits_to_double(float_to_bfloat16_bits(std::nan("")))));
  }
}

TEST_CASE("a model loads a checkpoint through load_state_dict(load_safetensors(path))", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "model.safetensors";
  veil_test::TinyModel source(1), target(2);
  veil::io::save_safetensors(path, source.state_dict(), {{"format", "pt"}});
  const Tensor<float> handle = target.weight;
  target.load_state_dict(veil::io::load_safetensors(path));
  CHECK(target.weight.to_vector() == source.weight.to_vector());
  CHECK(target.bias.to_vector() == source.bias.to_vector());
  CHECK(handle.to_vector() == source.weight.to_vector());  // copied into the existing storage
  CHECK(target.weight.requires_grad());

  SECTION("a double model loads the float checkpoint, a float model a double one") {
    const auto as_double = veil::io::load_safetensors(path).to_state_dict<double>();
    const auto bias = source.bias.to_vector();
    CHECK(as_double.at("bias").to_vector() == std::vector<double>(bias.begin(), bias.end()));
    const auto double_path = directory / "double.safetensors";
    veil::io::save_safetensors(double_path, as_double);
    veil_test::TinyModel other(3);
    other.load_state_dict(veil::io::load_safetensors(double_path));
    CHECK(other.weight.to_vector() == source.weight.to_vector());
  }
  SECTION("a bfloat16 checkpoint loads with rounded values") {
    const auto half_path = directory / "bf16.safetensors";
    veil::io::save_safetensors(half_path, source.state_dict(), {}, Dtype::BF16);
    veil_test::TinyModel other(3);
    other.load_state_dict(veil::io::load_safetensors(half_path));
    const auto loaded = other.weight.to_vector();
    const auto original = source.weight.to_vector();
    for (std::size_t i = 0; i < loaded.size(); ++i) {
      CHECK(loaded[i] == static_cast<float>(veil::io::bfloat16_bits_to_double(veil::io::float_to_bfloat16_bits(original[i]))));
      CHECK(std::abs(loaded[i] - original[i]) <= std::abs(original[i]) * std::ldexp(1.0f, -8));
    }
  }
}

TEST_CASE("integer and bool entries are refused by a float state dict unless asked", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "with_step.safetensors";
  veil_test::TinyModel source(1), target(2);
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, tensor] : source.state_dict()) entries.push_back(SafetensorsEntry::from_tensor(name, tensor));
  entries.push_back(SafetensorsEntry::from_tensor("step", make<std::int64_t>({}, {7})));
  entries.push_back(SafetensorsEntry::from_tensor("mask", make<bool>({2}, {true, false})));
  veil::io::save_safetensors(path, entries);
  const auto before = target.weight.to_vector();

  REQUIRE_THROWS_MATCHES(target.load_state_dict(veil::io::load_safetensors(path)), veil::IoError,
                         MessageContains("entry \"step\" holds I64 values; a Tensor<float> takes F16, BF16, F32, F64"));
  CHECK(target.weight.to_vector() == before);

  const auto file = veil::io::load_safetensors(path);
  using veil::io::ConversionOptions;
  using veil::io::IntegerEntries;
  SECTION("skip leaves them out, and the model loads") {
    const auto dict = file.to_state_dict<float>({.integer_entries = IntegerEntries::skip});
    CHECK(dict.size() == 2);
    target.load_state_dict(dict);
    CHECK(target.weight.to_vector() == source.weight.to_vector());
  }
  SECTION("convert casts them") {
    const auto dict = file.to_state_dict<float>({.integer_entries = IntegerEntries::convert});
    CHECK(dict.at("step").item() == 7.0f);
    CHECK(dict.at("mask").to_vector() == std::vector<float>{1.0f, 0.0f});
    CHECK(file.get<double>("step", {.integer_entries = IntegerEntries::convert}).item() == 7.0);
  }
  SECTION("get reads one entry as an integer or bool tensor") {
    CHECK(file.get<std::int64_t>("step").item() == 7);
    CHECK(file.get<std::int64_t>("mask").to_vector() == std::vector<std::int64_t>{1, 0});
    CHECK(file.get<bool>("mask").to_vector() == std::vector<bool>{true, false});
    REQUIRE_THROWS_MATCHES(file.get<float>("step"), veil::IoError, MessageContains("entry \"step\" holds I64 values"));
    REQUIRE_THROWS_MATCHES(file.get<bool>("weight"), veil::IoError,
                           MessageContains("holds F32 values; a Tensor<bool> takes BOOL without loss"));
    REQUIRE_THROWS_MATCHES(file.get<std::int32_t>("step"), veil::IoError,
                           MessageContains("a Tensor<std::int32_t> takes BOOL, U8, I32"));
    REQUIRE_THROWS_MATCHES(file.get<float>("missing"), veil::IoError, MessageContains("no tensor named \"missing\""));
  }
}

TEST_CASE("a checkpoint that does not fit the model changes no parameter", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "wrong_shape.safetensors";
  veil_test::TinyModel target(2);
  const auto before = target.weight.to_vector();
  veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"weight", veil::zeros<float>({2, 3})},
                                                              {"bias", veil::zeros<float>({3})}});
  REQUIRE_THROWS_MATCHES(target.load_state_dict(veil::io::load_safetensors(path)), veil::IoError,
                         MessageContains("size mismatch for weight"));
  CHECK(target.weight.to_vector() == before);
  CHECK(target.bias.to_vector() != std::vector<float>(3, 0.0f));
}

namespace {

/// The bytes of every parameter and buffer, by name.
std::map<std::string, std::vector<unsigned char>> state_bytes(const veil::nn::Module<float>& model) {
  std::map<std::string, std::vector<unsigned char>> out;
  for (const auto& [name, tensor] : model.state_dict()) {
    const auto values = tensor.to_vector();
    std::vector<unsigned char> bytes(values.size() * sizeof(float));
    if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    out.emplace(name, std::move(bytes));
  }
  return out;
}

}  // namespace

TEST_CASE("a checkpoint with a missing, unexpected, misshapen or integer entry changes no bit of any parameter",
          "[io][safetensors][transactional]") {
  // Every other entry of each faulty checkpoint is valid and holds different values, so an update
  // that copied entries up to the faulty one would show.
  ScratchDirectory directory;
  const auto path = directory / "faulty.safetensors";
  veil::Generator a(1), b(2);
  using veil::nn::TransformerBlockOptions;
  veil::nn::TransformerBlock<float> source(TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &a});
  veil::nn::TransformerBlock<float> target(TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &b});
  for (auto& [name, parameter] : source.named_parameters()) {
    veil::NoGradGuard no_grad;
    veil::detail::copy_into(parameter.detach(), veil::randn<float>(parameter.shape(), a));
  }
  const auto before = state_bytes(target);
  REQUIRE(before != state_bytes(source));
  const auto expect_unchanged = [&](const std::vector<SafetensorsEntry>& entries, const std::string& message,
                                    bool strict = true) {
    INFO(message);
    veil::io::save_safetensors(path, entries);
    REQUIRE_THROWS_MATCHES(target.load_state_dict(veil::io::load_safetensors(path), strict), veil::IoError,
                           MessageContains(message));
    CHECK(state_bytes(target) == before);
  };
  const auto entries_without = [&](const std::string& left_out) {
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, tensor] : source.state_dict())
      if (name != left_out) entries.push_back(SafetensorsEntry::from_tensor(name, tensor));
    return entries;
  };

  expect_unchanged(entries_without("mlp.2.bias"), "missing keys: mlp.2.bias");
  {
    auto entries = entries_without("");
    entries.push_back(SafetensorsEntry::from_tensor("mlp.3.weight", veil::ones<float>({8, 8})));
    expect_unchanged(entries, "unexpected keys: mlp.3.weight");
  }
  {
    auto entries = entries_without("mlp.2.weight");  // the last parameter the block registers
    entries.push_back(SafetensorsEntry::from_tensor("mlp.2.weight", veil::ones<float>({32, 8})));
    expect_unchanged(entries, "size mismatch for mlp.2.weight: checkpoint [32, 8] vs model [8, 32]");
    // Not strict: missing and unexpected keys are allowed, a wrong shape still is not.
    entries.erase(entries.begin());
    expect_unchanged(entries, "size mismatch for mlp.2.weight", /*strict=*/false);
  }
  {
    auto entries = entries_without("attn.in_proj_weight");  // the first parameter it registers
    entries.push_back(SafetensorsEntry::from_tensor("attn.in_proj_weight", veil::ones<float>({24})));
    expect_unchanged(entries, "size mismatch for attn.in_proj_weight: checkpoint [24] vs model [24, 8]");
  }
  {
    auto entries = entries_without("");
    entries.push_back(SafetensorsEntry::from_tensor("step", veil::scalar<std::int64_t>(100)));
    expect_unchanged(entries, "entry \"step\" holds I64 values");
  }
  {
    INFO("several faults are reported together");
    auto entries = entries_without("ln1.bias");
    entries.push_back(SafetensorsEntry::from_tensor("extra", veil::ones<float>({1})));
    veil::io::save_safetensors(path, entries);
    try {
      target.load_state_dict(veil::io::load_safetensors(path));
      FAIL("load_state_dict accepted a checkpoint with a missing and an unexpected key");
    } catch (const veil::IoError& error) {
      const std::string what = error.what();
      CHECK(what.find("nothing was loaded") != std::string::npos);
      CHECK(what.find("missing keys: ln1.bias") != std::string::npos);
      CHECK(what.find("unexpected keys: extra") != std::string::npos);
    }
    CHECK(state_bytes(target) == before);
  }
  // The same checkpoint without its faults loads every entry.
  veil::io::save_safetensors(path, entries_without(""));
  target.load_state_dict(veil::io::load_safetensors(path));
  CHECK(state_bytes(target) == state_bytes(source));
}

TEST_CASE("non-contiguous and tied tensors are written in row-major order once per name", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "views.safetensors";
  const auto base = make<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"transposed", base.transpose(0, 1)},
                                                              {"tied_a", base}, {"tied_b", base}});
  const auto file = veil::io::load_safetensors(path);
  CHECK(file.get<float>("transposed").shape() == Shape{3, 2});
  CHECK(file.get<float>("transposed").to_vector() == std::vector<float>{1, 4, 2, 5, 3, 6});
  CHECK(file.get<float>("tied_a").to_vector() == base.to_vector());
  CHECK(file.get<float>("tied_b").to_vector() == base.to_vector());
  CHECK_FALSE(file.get<float>("tied_a").shares_storage_with(file.get<float>("tied_b")));
}

TEST_CASE("the writer refuses what no reader could load and creates no file", "[io][safetensors]") {
  ScratchDirectory directory;
  const auto path = directory / "refused.safetensors";
  const auto tensor = make<float>({1}, {1});
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"__metadata__", tensor}}),
                         veil::IoError, MessageContains("cannot be named \"__metadata__\""));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"bad\xff", tensor}}),
                         veil::IoError, MessageContains("is not valid UTF-8"));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"t", tensor}}, {{"k", "\xc3"}}),
                         veil::IoError, MessageContains("metadata value of \"k\" is not valid UTF-8"));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, {SafetensorsEntry::from_tensor("t", tensor),
                                                           SafetensorsEntry::from_tensor("t", tensor)}),
                         veil::IoError, MessageContains("duplicate tensor name \"t\""));
  SafetensorsEntry short_entry = SafetensorsEntry::from_tensor("t", tensor);
  short_entry.bytes.pop_back();
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, {short_entry}), veil::IoError,
                         MessageContains("shape [1] of F32 needs 4 bytes, got 3"));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"t", Tensor<float>()}}),
                         veil::IoError, MessageContains("tensor \"t\" is undefined"));
  REQUIRE_THROWS_MATCHES(veil::io::save_safetensors(path, veil::nn::StateDict<float>{{"t", tensor}}, {}, Dtype::I64),
                         veil::IoError, MessageContains("store_as must be F16, BF16, F32 or F64"));
  REQUIRE_THROWS_MATCHES(SafetensorsEntry::from_tensor("i", make<std::int64_t>({1}, {1}), Dtype::F32), veil::IoError,
                         MessageContains("is stored as I64, not F32"));
  CHECK(directory.listing().empty());
}

// ---- files exchanged with Python ---------------------------------------------------------------------

namespace {

const nlohmann::json& python_fixture() {
  static const nlohmann::json loaded = [] {
    const std::string path = VEIL_FIXTURE_DIR "/safetensors_fixture.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path + "; regenerate it with make_safetensors_fixtures.py");
    return nlohmann::json::parse(in);
  }();
  return loaded;
}

const std::filesystem::path python_file = VEIL_FIXTURE_DIR "/safetensors_fixture.safetensors";

std::vector<unsigned char> from_hex(const std::string& hex) {
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<unsigned char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

template <class Bits, class T>
Tensor<T> from_bits(const nlohmann::json& entry, const char* field) {
  std::vector<T> values;
  for (const auto& bits : entry.at(field)) values.push_back(std::bit_cast<T>(bits.get<Bits>()));
  return make<T>(entry.at("shape").get<Shape>(), values);
}

}  // namespace

TEST_CASE("a file written in Python with torch values loads with the same values", "[io][safetensors][python]") {
  const auto file = veil::io::load_safetensors(python_file);
  CHECK(file.metadata() == python_fixture().at("metadata").get<veil::io::Metadata>());
  CHECK(file.size() == python_fixture().at("entries").size());
  for (const auto& expected : python_fixture().at("entries")) {
    const std::string name = expected.at("name");
    const std::string dtype = expected.at("dtype");
    INFO("entry " << name);
    const auto& entry = file.entry(name);
    CHECK(veil::io::dtype_name(entry.dtype) == dtype);
    CHECK(entry.shape == expected.at("shape").get<Shape>());
    CHECK(entry.bytes == from_hex(expected.at("raw_hex")));
    if (dtype == "F16" || dtype == "BF16") {
      // torch's decoding of its own half / bfloat16 values
      require_identical(file.get<float>(name), from_bits<std::uint32_t, float>(expected, "decoded_f32_bits"));
    } else if (dtype == "F32") {
      require_identical(file.get<float>(name), from_bits<std::uint32_t, float>(expected, "source_f32_bits"));
    } else if (dtype == "F64") {
      require_identical(file.get<double>(name), from_bits<std::uint64_t, double>(expected, "source_f64_bits"));
    } else if (dtype == "BOOL") {
      std::vector<bool> values;
      for (const auto& value : expected.at("values")) values.push_back(value.get<int>() != 0);
      CHECK(file.get<bool>(name).to_vector() == values);
    } else {
      CHECK(file.get<std::int64_t>(name).to_vector() == expected.at("values").get<std::vector<std::int64_t>>());
    }
  }
}

TEST_CASE("veil writes byte for byte the file the Python writer wrote from the same tensors", "[io][safetensors][python]") {
  // F16 and BF16 entries are encoded by veil from the float32 source values, so this also checks
  // veil's rounding against torch's on ties, subnormals, overflow and NaN.
  std::vector<SafetensorsEntry> entries;
  for (const auto& expected : python_fixture().at("entries")) {
    const std::string name = expected.at("name");
    const auto dtype = *veil::io::dtype_from_name(expected.at("dtype").get<std::string>());
    const Shape shape = expected.at("shape").get<Shape>();
    if (dtype == Dtype::F16 || dtype == Dtype::BF16 || dtype == Dtype::F32) {
      entries.push_back(SafetensorsEntry::from_tensor(name, from_bits<std::uint32_t, float>(expected, "source_f32_bits"), dtype));
    } else if (dtype == Dtype::F64) {
      entries.push_back(SafetensorsEntry::from_tensor(name, from_bits<std::uint64_t, double>(expected, "source_f64_bits")));
    } else if (dtype == Dtype::BOOL) {
      std::vector<bool> values;
      for (const auto& value : expected.at("values")) values.push_back(value.get<int>() != 0);
      entries.push_back(SafetensorsEntry::from_tensor(name, make<bool>(shape, values)));
    } else if (dtype == Dtype::I64) {
      entries.push_back(SafetensorsEntry::from_tensor(name, make<std::int64_t>(shape, expected.at("values").get<std::vector<std::int64_t>>())));
    } else if (dtype == Dtype::I32) {
      entries.push_back(SafetensorsEntry::from_tensor(name, make<std::int32_t>(shape, expected.at("values").get<std::vector<std::int32_t>>())));
    } else {
      entries.push_back(SafetensorsEntry::from_tensor(name, make<std::uint8_t>(shape, expected.at("values").get<std::vector<std::uint8_t>>())));
    }
    CHECK(entries.back().bytes == from_hex(expected.at("raw_hex")));
  }
  ScratchDirectory directory;
  const auto path = directory / "veil_written.safetensors";
  veil::io::save_safetensors(path, entries, python_fixture().at("metadata").get<veil::io::Metadata>());
  CHECK(veil_test::read_bytes(path) == veil_test::read_bytes(python_file));
}

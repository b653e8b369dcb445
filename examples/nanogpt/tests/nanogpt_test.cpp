// The nanogpt example against PyTorch (fixtures from reference/make_eval_fixture.py) and the
// pieces a run depends on: UTF-8, the vocabulary, document packing, KV-cache sampling.
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../train.hpp"

namespace {

const std::string fixtures = NANOGPT_FIXTURE_DIR;

nlohmann::json expected() {
  std::ifstream in(fixtures + "/gpt_tiny_expected.json");
  return nlohmann::json::parse(in);
}

std::vector<std::int64_t> tiny_tokens(const nanogpt::Vocabulary& vocabulary) {
  return vocabulary.encode(nanogpt::decode_utf8(nanogpt::read_data(fixtures + "/tiny.txt"), "tiny.txt"), "tiny.txt");
}

}  // namespace

TEST_CASE("a PyTorch GPT checkpoint gives PyTorch's validation loss and next-token logits", "[nanogpt]") {
  const auto checkpoint = nanogpt::read_checkpoint(fixtures + "/gpt_tiny.safetensors");
  auto model = nanogpt::load_model(checkpoint);
  const auto reference = expected();
  const auto ids = tiny_tokens(checkpoint.vocabulary);
  const std::vector<std::int64_t> validation(ids.begin() + static_cast<std::ptrdiff_t>(ids.size() * 0.9), ids.end());
  // fp32 throughout on both sides; a mean of ~900 cross-entropies near 3.9 agrees to ~1e-6.
  CHECK(nanogpt::evaluate_windows(*model, validation, 0) == Approx(reference["val_loss"].get<double>()).margin(1e-4));

  veil::NoGradGuard no_grad;
  const veil::Index T = reference["prompt_length"].get<veil::Index>();
  auto prompt = veil::Tensor<std::int64_t>::empty({1, T});
  std::copy(ids.begin(), ids.begin() + T, prompt.data());
  const auto logits = model->forward(prompt).contiguous();
  const auto next = reference["next_token_logits"].get<std::vector<double>>();
  REQUIRE(static_cast<veil::Index>(next.size()) == checkpoint.vocabulary.size());
  double worst = 0;
  for (std::size_t c = 0; c < next.size(); ++c)
    worst = std::max(worst, std::abs(static_cast<double>(logits.data()[(T - 1) * logits.size(2) + c]) - next[c]));
  CHECK(worst <= 1e-4);
}

TEST_CASE("sampling with and without the KV cache draws the same tokens past the block size", "[nanogpt]") {
  const auto checkpoint = nanogpt::read_checkpoint(fixtures + "/gpt_tiny.safetensors");
  auto model = nanogpt::load_model(checkpoint);
  nanogpt::SampleOptions options;
  options.max_new_tokens = 80;  // block size 32: the cache restarts twice
  options.seed = 7;
  const auto prompt = checkpoint.vocabulary.encode(U"The cat", "prompt");
  const auto cached = nanogpt::generate(*model, prompt, options);
  options.kv_cache = false;
  const auto recomputed = nanogpt::generate(*model, prompt, options);
  CHECK(cached.size() == prompt.size() + 80);
  CHECK(cached == recomputed);
}

TEST_CASE("UTF-8 decoding round-trips text and rejects malformed bytes", "[nanogpt][data]") {
  const std::string text = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80";
  CHECK(nanogpt::encode_utf8(nanogpt::decode_utf8(text, "t")) == text);
  CHECK(nanogpt::decode_utf8(text, "t").size() == 8);
  for (const std::string& bad : {std::string("\xC3"), std::string("\xC0\x80"), std::string("\xED\xA0\x80"),
                                std::string("ab\xFF"), std::string("\xE2\x82")})
    CHECK_THROWS_WITH(nanogpt::decode_utf8(bad, "f.txt"), Catch::Contains("'f.txt' is not valid UTF-8"));
}

TEST_CASE("the vocabulary is the sorted distinct characters and rejects unknown ones", "[nanogpt][data]") {
  const auto vocabulary = nanogpt::Vocabulary::of_text(U"hello\n");
  CHECK(vocabulary.characters() == U"\nehlo");
  CHECK(vocabulary.encode(U"hole", "x") == std::vector<std::int64_t>{2, 4, 3, 1});
  CHECK_THROWS_WITH(vocabulary.encode(U"hex", "--prompt"), Catch::Contains("--prompt contains the character 'x'"));
}

TEST_CASE("documents split at separator lines and pack into rows with restarting positions", "[nanogpt][data]") {
  const auto documents = nanogpt::split_documents(U"ab\n%\ncde\n%\nf\n", U"%");
  REQUIRE(documents.size() == 3);
  CHECK(documents[0] == U"ab\n");
  CHECK(documents[1] == U"cde\n");
  nanogpt::Split split{{0, 1, 2, 3, 4, 5, 6, 7, 8}, {0, 3, 7}};  // documents of 3, 4 and 2 tokens
  veil::Generator generator(3);
  const auto batch = nanogpt::document_batch(split, 2, 5, generator);
  for (veil::Index b = 0; b < 2; ++b)
    for (veil::Index t = 0; t < 5; ++t) {
      const auto token = batch.inputs.at({b, t});
      const auto position = batch.positions.at({b, t});
      const veil::Index start = token >= 7 ? 7 : token >= 3 ? 3 : 0;
      CHECK(position == token - start);  // positions restart at each document
      const veil::Index end = start == 0 ? 3 : start == 3 ? 7 : 9;
      CHECK(batch.targets.at({b, t}) == (token + 1 < end ? token + 1 : nanogpt::ignore_target));
    }
  // The mask is documents & causal over the row's packing.
  const auto keep = veil::mask::materialize(batch.mask, 2, 1, 5, 5);
  for (veil::Index b = 0; b < 2; ++b)
    for (veil::Index i = 0; i < 5; ++i)
      for (veil::Index j = 0; j < 5; ++j) {
        const bool same_document = batch.positions.at({b, i}) - batch.positions.at({b, j}) == i - j;
        CHECK(keep.at({b, 0, i, j}) == (j <= i && same_document));
      }
}

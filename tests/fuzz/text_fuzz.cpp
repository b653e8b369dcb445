// Fuzzes the nanogpt example's text pipeline (examples/nanogpt/data.hpp): UTF-8 decoding, the
// character vocabulary, the 90/10 split, --documents separator packing and the training batches.
//
// Input: one flag byte (bit 0: use a separator; bits 1-3: its length), the separator, then the
// text. Accepted outcomes: nanogpt::UsageError (the example's typed error: bad UTF-8, no
// documents, ...), or a corpus whose invariants hold:
//   - decoding agrees with veil's own UTF-8 validator (io/safetensors.hpp) on what is valid, and
//     encode(decode(bytes)) == bytes;
//   - the vocabulary is the sorted distinct characters; every id is below its size and
//     decode(encode(text)) == text;
//   - without a separator the two splits are the whole text, 90% / 10%; with one, the documents
//     are the text minus the separator lines, each starting at a recorded offset;
//   - window and document batches hold only valid ids, targets and positions, and their masks
//     bind to the batch's geometry.
#include "data.hpp"

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using nanogpt::Index;
using veil_fuzz::fuzz_failure;

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  VEIL_FUZZ_CHECK(out.good(), "cannot write the scratch file ", path.string());
}

void check_ids(const std::vector<std::int64_t>& ids, Index vocabulary_size, const char* what) {
  for (std::size_t i = 0; i < ids.size(); ++i)
    VEIL_FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocabulary_size, what, ": id ", ids[i], " at ", i, " is outside [0, ",
                    vocabulary_size, ")");
}

void check_split(const nanogpt::Split& split, Index vocabulary_size, const char* what) {
  check_ids(split.tokens, vocabulary_size, what);
  VEIL_FUZZ_CHECK(!split.document_starts.empty() && split.document_starts[0] == 0, what, ": documents must start at 0");
  for (std::size_t d = 1; d < split.document_starts.size(); ++d)
    VEIL_FUZZ_CHECK(split.document_starts[d] > split.document_starts[d - 1] &&
                        split.document_starts[d] < static_cast<Index>(split.tokens.size()),
                    what, ": document ", d, " starts at ", split.document_starts[d]);
}

void check_batch(const nanogpt::Batch& batch, Index batch_size, Index block_size, Index vocabulary_size) {
  const veil::Shape expected{batch_size, block_size};
  VEIL_FUZZ_CHECK(batch.inputs.shape() == expected && batch.targets.shape() == expected && batch.positions.shape() == expected,
                  "batch tensors have the wrong shape");
  check_ids(batch.inputs.to_vector(), vocabulary_size, "batch inputs");
  for (std::int64_t target : batch.targets.to_vector())
    VEIL_FUZZ_CHECK(target == nanogpt::ignore_target || (target >= 0 && target < vocabulary_size), "batch target ", target);
  for (std::int64_t position : batch.positions.to_vector())
    VEIL_FUZZ_CHECK(position >= 0 && position < block_size, "batch position ", position);
  // The mask must fit the call the model makes with it: [B, heads, T, T].
  const veil::Tensor<bool> keep = veil::mask::materialize(batch.mask, batch_size, 1, block_size, block_size);
  const auto kept = keep.to_vector();
  for (Index b = 0; b < batch_size; ++b)
    for (Index i = 0; i < block_size; ++i)
      VEIL_FUZZ_CHECK(kept[static_cast<std::size_t>((b * block_size + i) * block_size + i)], "batch mask: token ", i,
                      " of row ", b, " does not attend to itself");
}

void check_corpus(const std::u32string& text, const nanogpt::Corpus& corpus, const std::u32string* separator) {
  const nanogpt::Vocabulary& vocabulary = corpus.vocabulary;
  const Index size = vocabulary.size();
  const std::u32string& characters = vocabulary.characters();
  for (std::size_t c = 1; c < characters.size(); ++c)
    VEIL_FUZZ_CHECK(characters[c - 1] < characters[c], "the vocabulary is not sorted and distinct");
  check_split(corpus.train, size, "train");
  check_split(corpus.validation, size, "validation");
  const auto ids = vocabulary.encode(text, "the text");
  VEIL_FUZZ_CHECK(vocabulary.decode(ids) == text, "decode(encode(text)) differs from the text");

  if (!separator) {
    std::vector<std::int64_t> joined = corpus.train.tokens;
    joined.insert(joined.end(), corpus.validation.tokens.begin(), corpus.validation.tokens.end());
    VEIL_FUZZ_CHECK(joined == ids, "train + validation is not the whole text");
    VEIL_FUZZ_CHECK(corpus.train.tokens.size() == static_cast<std::size_t>(static_cast<double>(ids.size()) * 0.9),
                    "the training split holds ", corpus.train.tokens.size(), " of ", ids.size(), " tokens");
    return;
  }
  // The documents are the text without its separator lines.
  std::u32string kept;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find(U'\n', start);
    const bool newline = end != std::u32string::npos;
    if (!newline) end = text.size();
    if (text.compare(start, end - start, *separator) != 0) kept += text.substr(start, end - start + (newline ? 1 : 0));
    start = end + 1;
  }
  std::vector<std::int64_t> joined = corpus.train.tokens;
  if (corpus.validation.tokens != corpus.train.tokens || corpus.validation.document_starts != corpus.train.document_starts)
    joined.insert(joined.end(), corpus.validation.tokens.begin(), corpus.validation.tokens.end());
  VEIL_FUZZ_CHECK(vocabulary.decode(joined) == kept, "the documents are not the text without its separator lines");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  veil::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool documents = (data[0] & 1) != 0;
  const std::size_t separator_length = std::min<std::size_t>((data[0] >> 1) & 7, size - 1);
  const std::string separator_bytes(reinterpret_cast<const char*>(data) + 1, separator_length);
  const std::string bytes(reinterpret_cast<const char*>(data) + 1 + separator_length, size - 1 - separator_length);

  // Decoding, against the independent validator in veil's io layer.
  std::u32string text;
  bool valid = true;
  try {
    text = nanogpt::decode_utf8(bytes, "input");
  } catch (const nanogpt::UsageError&) {
    valid = false;
  }
  VEIL_FUZZ_CHECK(valid == !veil::io::detail::invalid_utf8_position(bytes).has_value(),
                  "decode_utf8 and veil's UTF-8 validator disagree: decode_utf8 says ", valid ? "valid" : "invalid");
  if (valid) VEIL_FUZZ_CHECK(nanogpt::encode_utf8(text) == bytes, "encode(decode(bytes)) != bytes");

  // The whole loader, through a file as the example reads it.
  const std::filesystem::path path = veil_fuzz::scratch_directory() / "input.txt";
  write_file(path, bytes);
  nanogpt::Corpus corpus;
  std::u32string separator;
  try {
    if (documents) separator = nanogpt::decode_utf8(separator_bytes, "--documents");
    corpus = nanogpt::load_corpus(path.string(), documents ? std::optional<std::string>(separator_bytes) : std::nullopt);
  } catch (const nanogpt::UsageError&) {
    return 0;  // invalid UTF-8, an empty file or no documents: accepted
  } catch (const std::exception& error) {
    fuzz_failure("load_corpus threw something other than nanogpt::UsageError: ", error.what());
  }
  VEIL_FUZZ_CHECK(valid, "load_corpus accepted text that is not UTF-8");
  check_corpus(text, corpus, documents ? &separator : nullptr);

  // Batches, on the sizes train() allows: T + 1 training tokens at least.
  const Index batch_size = 2, block_size = std::min<Index>(4, static_cast<Index>(corpus.train.tokens.size()) - 1);
  if (block_size < 1) return 0;
  veil::Generator generator(data[0]);
  try {
    for (const nanogpt::Split* split : {&corpus.train, &corpus.validation}) {
      if (documents) {
        check_batch(nanogpt::document_batch(*split, batch_size, block_size, generator), batch_size, block_size,
                    corpus.vocabulary.size());
      } else if (static_cast<Index>(split->tokens.size()) > block_size) {
        check_batch(nanogpt::window_batch(*split, batch_size, block_size, generator), batch_size, block_size,
                    corpus.vocabulary.size());
      }
    }
  } catch (const std::exception& error) {
    fuzz_failure("building a batch threw: ", error.what());
  }
  return 0;
}

// Text corpus for the character-level GPT: UTF-8 decoding, the vocabulary, the train/validation
// split and training batches, plain or packed with whole documents.
//
// Rules that keep token ids identical to nanoGPT's shakespeare_char preparation on the same file:
// vocabulary = the sorted unique characters (Unicode code points) of the whole text; split =
// first 90% of the characters for training, the last 10% for validation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <veil/veil.hpp>

namespace nanogpt {

using veil::Index;

/// A user-facing failure: printed as one line, exit code 1.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Decodes UTF-8; throws UsageError naming `source` and the byte offset of the first invalid sequence.
inline std::u32string decode_utf8(const std::string& bytes, const std::string& source) {
  std::u32string text;
  text.reserve(bytes.size());
  std::size_t i = 0;
  const auto fail = [&] {
    throw UsageError("data file '" + source + "' is not valid UTF-8 (invalid byte sequence at offset " +
                     std::to_string(i) + ")");
  };
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    int extra = lead < 0x80 ? 0 : (lead >> 5) == 0x6 ? 1 : (lead >> 4) == 0xE ? 2 : (lead >> 3) == 0x1E ? 3 : -1;
    if (extra < 0 || i + static_cast<std::size_t>(extra) >= bytes.size()) fail();
    char32_t code = extra == 0 ? lead : extra == 1 ? lead & 0x1F : extra == 2 ? lead & 0x0F : lead & 0x07;
    for (int k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(bytes[i + k]);
      if ((next >> 6) != 0x2) fail();
      code = (code << 6) | (next & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    const char32_t minimum[] = {0, 0x80, 0x800, 0x10000};
    if (code < minimum[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) fail();
    text.push_back(code);
    i += static_cast<std::size_t>(extra) + 1;
  }
  return text;
}

inline std::string encode_utf8(const std::u32string& text) {
  std::string out;
  for (char32_t c : text) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

/// The bytes of a file, or of every regular file in a directory (sorted by name; symbolic links
/// and fortune's binary ".dat" indices skipped), concatenated.
inline std::string read_data(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  std::vector<fs::path> files;
  if (fs::is_directory(path, error)) {
    for (const auto& entry : fs::directory_iterator(path, error))
      if (entry.is_regular_file() && !entry.is_symlink() && entry.path().extension() != ".dat")
        files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw UsageError("data directory '" + path + "' holds no text files");
  } else {
    files.push_back(path);
  }
  std::string bytes;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw UsageError("cannot read data file '" + file.string() + "': no such readable file");
    std::ostringstream content;
    content << in.rdbuf();
    bytes += content.str();
  }
  if (bytes.empty()) throw UsageError("data file '" + path + "' is empty");
  return bytes;
}

/// Character vocabulary: ids are positions in the sorted list of distinct characters.
class Vocabulary {
 public:
  Vocabulary() = default;
  explicit Vocabulary(std::u32string characters) : characters_(std::move(characters)) {
    for (std::size_t id = 0; id < characters_.size(); ++id) ids_[characters_[id]] = static_cast<std::int64_t>(id);
  }
  static Vocabulary of_text(const std::u32string& text) {
    std::set<char32_t> distinct(text.begin(), text.end());
    return Vocabulary(std::u32string(distinct.begin(), distinct.end()));
  }
  Index size() const { return static_cast<Index>(characters_.size()); }
  const std::u32string& characters() const { return characters_; }

  std::vector<std::int64_t> encode(const std::u32string& text, const char* what) const {
    std::vector<std::int64_t> ids;
    ids.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
      auto found = ids_.find(text[i]);
      if (found == ids_.end())
        throw UsageError(std::string(what) + " contains the character '" + encode_utf8(std::u32string(1, text[i])) +
                         "' (position " + std::to_string(i) + "), which is not in the model's vocabulary");
      ids.push_back(found->second);
    }
    return ids;
  }
  std::u32string decode(const std::vector<std::int64_t>& ids) const {
    std::u32string text;
    for (auto id : ids) text.push_back(characters_.at(static_cast<std::size_t>(id)));
    return text;
  }

 private:
  std::u32string characters_;
  std::map<char32_t, std::int64_t> ids_;
};

/// Token ids of one split, with the start offsets of its documents (just {0} without documents).
struct Split {
  std::vector<std::int64_t> tokens;
  std::vector<Index> document_starts;
};

struct Corpus {
  Vocabulary vocabulary;
  Split train, validation;
};

/// Splits text into documents at lines that consist of `separator` alone; the separator lines go.
inline std::vector<std::u32string> split_documents(const std::u32string& text, const std::u32string& separator) {
  std::vector<std::u32string> documents;
  std::u32string current;
  std::size_t line_start = 0;
  while (line_start < text.size()) {
    std::size_t line_end = text.find(U'\n', line_start);
    const bool has_newline = line_end != std::u32string::npos;
    if (!has_newline) line_end = text.size();
    const std::u32string line = text.substr(line_start, line_end - line_start);
    if (line == separator) {
      if (!current.empty()) documents.push_back(current);
      current.clear();
    } else {
      current += line;
      if (has_newline) current.push_back(U'\n');
    }
    line_start = line_end + 1;
  }
  if (!current.empty()) documents.push_back(current);
  return documents;
}

/// Loads, decodes and splits a corpus. With a separator, documents are kept whole on their side
/// of the 90% mark (a document goes to training when it starts before the mark).
inline Corpus load_corpus(const std::string& path, const std::optional<std::string>& separator) {
  const std::u32string text = decode_utf8(read_data(path), path);
  Corpus corpus;
  corpus.vocabulary = Vocabulary::of_text(text);
  if (!separator) {
    const auto ids = corpus.vocabulary.encode(text, "the data");
    const auto cut = static_cast<std::ptrdiff_t>(static_cast<double>(ids.size()) * 0.9);
    corpus.train = {std::vector<std::int64_t>(ids.begin(), ids.begin() + cut), {0}};
    corpus.validation = {std::vector<std::int64_t>(ids.begin() + cut, ids.end()), {0}};
    return corpus;
  }
  const auto documents = split_documents(text, decode_utf8(*separator, "--documents"));
  if (documents.empty()) throw UsageError("data file '" + path + "' holds no documents between separators");
  Index total = 0;
  for (const auto& document : documents) total += static_cast<Index>(document.size());
  Index seen = 0;
  for (const auto& document : documents) {
    Split& split = static_cast<double>(seen) < 0.9 * static_cast<double>(total) ? corpus.train : corpus.validation;
    split.document_starts.push_back(static_cast<Index>(split.tokens.size()));
    const auto ids = corpus.vocabulary.encode(document, "the data");
    split.tokens.insert(split.tokens.end(), ids.begin(), ids.end());
    seen += static_cast<Index>(document.size());
  }
  if (corpus.validation.tokens.empty()) corpus.validation = corpus.train;  // one document: validate on it
  return corpus;
}

/// One training batch: inputs and targets [B, T], position ids [B, T], and the attention mask.
struct Batch {
  veil::Tensor<std::int64_t> inputs, targets, positions;
  veil::mask::Mask mask;
};

inline constexpr std::int64_t ignore_target = -100;

/// nanoGPT's get_batch: B random windows of T + 1 consecutive tokens.
inline Batch window_batch(const Split& split, Index batch_size, Index block_size, veil::Generator& generator) {
  const Index room = static_cast<Index>(split.tokens.size()) - block_size;
  Batch batch{veil::Tensor<std::int64_t>::empty({batch_size, block_size}),
              veil::Tensor<std::int64_t>::empty({batch_size, block_size}),
              veil::Tensor<std::int64_t>::empty({batch_size, block_size}), veil::mask::causal()};
  for (Index b = 0; b < batch_size; ++b) {
    const Index start = static_cast<Index>(generator.next_bits() % static_cast<std::uint64_t>(room));
    for (Index t = 0; t < block_size; ++t) {
      batch.inputs.data()[b * block_size + t] = split.tokens[start + t];
      batch.targets.data()[b * block_size + t] = split.tokens[start + t + 1];
      batch.positions.data()[b * block_size + t] = t;
    }
  }
  return batch;
}

/// B rows of T tokens, each packed with whole documents from a random starting document (the
/// last one cut at the row's end). Positions restart at 0 in each document, attention is
/// documents & causal, and the last token of each document has no target (its successor is the
/// next document's first token).
inline Batch document_batch(const Split& split, Index batch_size, Index block_size, veil::Generator& generator) {
  Batch batch{veil::Tensor<std::int64_t>::empty({batch_size, block_size}),
              veil::Tensor<std::int64_t>::empty({batch_size, block_size}),
              veil::Tensor<std::int64_t>::empty({batch_size, block_size}), {}};
  const Index documents = static_cast<Index>(split.document_starts.size());
  const Index total = static_cast<Index>(split.tokens.size());
  std::vector<std::vector<Index>> lengths(static_cast<std::size_t>(batch_size));
  for (Index b = 0; b < batch_size; ++b) {
    Index document = static_cast<Index>(generator.next_bits() % static_cast<std::uint64_t>(documents));
    Index filled = 0;
    while (filled < block_size) {
      const Index begin = split.document_starts[document];
      const Index end = document + 1 < documents ? split.document_starts[document + 1] : total;
      const Index take = std::min(end - begin, block_size - filled);
      for (Index t = 0; t < take; ++t) {
        const Index at = b * block_size + filled + t;
        batch.inputs.data()[at] = split.tokens[begin + t];
        batch.targets.data()[at] = t + 1 < end - begin ? split.tokens[begin + t + 1] : ignore_target;
        batch.positions.data()[at] = t;
      }
      lengths[b].push_back(take);
      filled += take;
      document = (document + 1) % documents;
    }
  }
  batch.mask = veil::mask::documents(lengths) & veil::mask::causal();
  return batch;
}

}  // namespace nanogpt

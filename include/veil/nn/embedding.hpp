// nn::Embedding: a learnable table of num_embeddings rows of width embedding_dim, indexed by
// int64 ids (torch.nn.Embedding; parameter "weight" [V, E], initialised N(0, 1) like torch).
#pragma once

#include "veil/nn/linear.hpp"

namespace veil::nn {

struct EmbeddingOptions {
  Index num_embeddings = 0;        // V: ids lie in [0, V)
  Index embedding_dim = 0;         // E: width of each row
  Generator* generator = nullptr;  // initial values; nullptr: a Generator(0) of the constructor's own
};

template <class T = float>
class Embedding : public Module<T> {
 public:
  explicit Embedding(const EmbeddingOptions& options) : Embedding(options, options.generator) {}
  Embedding(const EmbeddingOptions& options, Generator& generator) : Embedding(options, &generator) {}

  /// ids: any shape, values in [0, V)  ->  [*ids.shape, E]. Out-of-range ids throw ValueError
  /// naming the position before any work (veil::embedding).
  Tensor<T> forward(const Tensor<std::int64_t>& ids) const { return embedding(weight, ids); }
  Tensor<T> operator()(const Tensor<std::int64_t>& ids) const { return forward(ids); }

  const EmbeddingOptions& options() const { return options_; }

  Tensor<T> weight;  // [num_embeddings, embedding_dim]

 private:
  Embedding(const EmbeddingOptions& options, Generator* given) : options_(options) {
    VEIL_CHECK(options.num_embeddings > 0, ValueError, "Embedding: num_embeddings must be > 0, got ",
               options.num_embeddings);
    VEIL_CHECK(options.embedding_dim > 0, ValueError, "Embedding: embedding_dim must be > 0, got ",
               options.embedding_dim);
    options_.generator = nullptr;
    Generator fallback(0);
    weight = this->register_parameter(
        "weight", randn<T>({options.num_embeddings, options.embedding_dim}, detail::init_generator(given, fallback)));
  }

  EmbeddingOptions options_;
};

}  // namespace veil::nn

// nn::MultiHeadAttention beyond the torch fixtures (mha_torch_fixtures_test.cpp): gradcheck of
// every input and parameter, grouped-query heads, the KV cache, need-weights, dropout, parameter
// names and input validation.
#include <veil/autograd.hpp>
#include <veil/nn.hpp>

#include <catch2/catch.hpp>

#include "support/modules.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Tensor;
using veil_test::MessageContains;
namespace nn = veil::nn;
namespace mask = veil::mask;

namespace {

using veil_test::max_difference;
using veil_test::randomise;

Tensor<double> randn_grad(const veil::Shape& shape, veil::Generator& generator) {
  Tensor<double> x = veil::randn<double>(shape, generator);
  x.set_requires_grad(true);
  return x;
}



/// The module's parameters as gradcheck inputs, and a function pointing the module at gradcheck's copies.
struct BoundParameters {
  std::vector<Tensor<double>> tensors;
  std::vector<Tensor<double>*> handles;
};

BoundParameters parameters_of(nn::MultiHeadAttention<double>& mha) {
  BoundParameters bound;
  for (Tensor<double>* handle : {&mha.in_proj_weight, &mha.q_proj_weight, &mha.k_proj_weight, &mha.v_proj_weight,
                                 &mha.in_proj_bias, &mha.out_proj->weight, &mha.out_proj->bias})
    if (handle->defined()) bound.handles.push_back(handle), bound.tensors.push_back(*handle);
  return bound;
}

}  // namespace

TEST_CASE("MultiHeadAttention parameters carry the torch names in the packed and the separate layouts", "[nn][mha]") {
  nn::MultiHeadAttention packed(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2});
  static_assert(std::is_same_v<decltype(packed), nn::MultiHeadAttention<float>>, "deduces float");
  CHECK(packed.packed());
  const auto state = packed.state_dict();
  CHECK(state.size() == 4);
  CHECK(state.at("in_proj_weight").shape() == veil::Shape{24, 8});
  CHECK(state.at("in_proj_bias").shape() == veil::Shape{24});
  CHECK(state.at("out_proj.weight").shape() == veil::Shape{8, 8});
  CHECK(state.at("out_proj.bias").shape() == veil::Shape{8});

  nn::MultiHeadAttention cross(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 4, .num_kv_heads = 2, .kdim = 5, .vdim = 3});
  CHECK_FALSE(cross.packed());
  const auto separate = cross.state_dict();
  CHECK(separate.size() == 6);
  CHECK(separate.at("q_proj_weight").shape() == veil::Shape{8, 8});
  CHECK(separate.at("k_proj_weight").shape() == veil::Shape{4, 5});  // Hkv * D = 2 * 2
  CHECK(separate.at("v_proj_weight").shape() == veil::Shape{4, 3});
  CHECK(separate.at("in_proj_bias").shape() == veil::Shape{16});     // E + 2 * Hkv * D

  nn::MultiHeadAttention bare(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2, .bias = false});
  CHECK(bare.state_dict().size() == 2);
  // torch's init: zero biases, xavier-uniform in_proj_weight (bound sqrt(6 / (8 + 24)) = 0.433).
  for (float b : packed.in_proj_bias.to_vector()) CHECK(b == 0.0f);
  for (float w : packed.in_proj_weight.to_vector()) CHECK(std::abs(w) <= 0.4331f);
}

TEST_CASE("MultiHeadAttention gradients of inputs and every parameter pass gradcheck in double", "[nn][mha][gradcheck]") {
  veil::Generator generator(11);
  SECTION("packed self-attention with a causal mask") {
    nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = 4, .num_heads = 2}, generator);
    randomise(mha, generator, 0.5);
    auto bound = parameters_of(mha);
    std::vector<Tensor<double>> inputs{randn_grad({2, 3, 4}, generator)};
    inputs.insert(inputs.end(), bound.tensors.begin(), bound.tensors.end());
    const auto result = veil::gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          for (std::size_t p = 0; p < bound.handles.size(); ++p) *bound.handles[p] = in[p + 1];
          return mha(in[0], mask::causal());
        },
        inputs);
    INFO(result.message);
    CHECK(result.passed);
  }
  SECTION("grouped-query cross-attention with kdim and vdim and key padding") {
    nn::MultiHeadAttention<double> mha(
        nn::MultiHeadAttentionOptions{.embed_dim = 4, .num_heads = 2, .num_kv_heads = 1, .kdim = 3, .vdim = 5}, generator);
    randomise(mha, generator, 0.5);
    auto bound = parameters_of(mha);
    std::vector<Tensor<double>> inputs{randn_grad({2, 2, 4}, generator), randn_grad({2, 3, 3}, generator),
                                       randn_grad({2, 3, 5}, generator)};
    inputs.insert(inputs.end(), bound.tensors.begin(), bound.tensors.end());
    const auto result = veil::gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          for (std::size_t p = 0; p < bound.handles.size(); ++p) *bound.handles[p] = in[p + 3];
          return mha(in[0], in[1], in[2], mask::key_padding({3, 2}));
        },
        inputs);
    INFO(result.message);
    CHECK(result.passed);
  }
  SECTION("need-weights path with per-head weights and a differentiable additive mask") {
    nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = 4, .num_heads = 2}, generator);
    randomise(mha, generator, 0.5);
    auto bound = parameters_of(mha);
    std::vector<Tensor<double>> inputs{randn_grad({1, 3, 4}, generator), randn_grad({3, 3}, generator)};
    inputs.insert(inputs.end(), bound.tensors.begin(), bound.tensors.end());
    const auto result = veil::gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          for (std::size_t p = 0; p < bound.handles.size(); ++p) *bound.handles[p] = in[p + 2];
          auto [out, weights] = mha.forward_with_weights(in[0], mask::additive(in[1]) & mask::causal(),
                                                         nn::AttentionWeights::per_head);
          return veil::sum(out, {2}) + veil::sum(weights, {1, 3});  // [1, 3]: both outputs checked
        },
        inputs);
    INFO(result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("grouped-query attention equals full attention with each key and value head repeated", "[nn][mha]") {
  veil::Generator generator(12);
  const Index E = 8, H = 4, Hkv = 2, D = 2;
  nn::MultiHeadAttention<double> grouped(nn::MultiHeadAttentionOptions{.embed_dim = E, .num_heads = H, .num_kv_heads = Hkv}, generator);
  nn::MultiHeadAttention<double> full(nn::MultiHeadAttentionOptions{.embed_dim = E, .num_heads = H}, generator);
  randomise(grouped, generator, 0.5);
  {
    // full's in_proj rows: q as is; k and v heads g repeated for the H / Hkv query heads they serve.
    veil::NoGradGuard no_grad;
    std::vector<Tensor<double>> weight_rows{grouped.q_proj_weight}, bias_rows{veil::narrow(grouped.in_proj_bias, 0, 0, E)};
    for (const auto& [weight, offset] : {std::pair{grouped.k_proj_weight, E}, std::pair{grouped.v_proj_weight, E + Hkv * D}})
      for (Index h = 0; h < H; ++h) {
        const Index g = h / (H / Hkv);
        weight_rows.push_back(veil::narrow(weight, 0, g * D, D));
        bias_rows.push_back(veil::narrow(grouped.in_proj_bias, 0, offset + g * D, D));
      }
    veil::detail::copy_into(full.in_proj_weight.detach(), veil::cat(weight_rows, 0));
    veil::detail::copy_into(full.in_proj_bias.detach(), veil::cat(bias_rows, 0));
    veil::detail::copy_into(full.out_proj->weight.detach(), grouped.out_proj->weight);
    veil::detail::copy_into(full.out_proj->bias.detach(), grouped.out_proj->bias);
  }
  const Tensor<double> x = veil::randn<double>({2, 6, E}, generator);
  CHECK(max_difference(grouped(x, mask::causal()), full(x, mask::causal())) < 1e-12);
}

TEST_CASE("incremental decoding with a KV cache over 20 steps equals the full causal forward", "[nn][mha][kv_cache]") {
  veil::Generator generator(13);
  const Index B = 2, L = 20, E = 16;
  for (Index kv_heads : {4, 2}) {
    nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = E, .num_heads = 4, .num_kv_heads = kv_heads}, generator);
    randomise(mha, generator, 0.5);
    const Tensor<double> x = veil::randn<double>({B, L, E}, generator);
    const Tensor<double> full = mha(x, mask::causal());
    veil::NoGradGuard no_grad;
    nn::KVCache<double> cache;
    std::vector<Tensor<double>> steps;
    for (Index t = 0; t < L; ++t) steps.push_back(mha(veil::narrow(x, 1, t, 1), mask::causal(), &cache));
    CHECK(cache.length() == L);
    CHECK(cache.keys().shape() == veil::Shape{B, kv_heads, L, 4});
    INFO("num_kv_heads = " << kv_heads);
    CHECK(max_difference(veil::cat(steps, 1), full) < 1e-12);

    // A prompt of 7 positions at once, then single tokens: the same rows again.
    cache.clear();
    std::vector<Tensor<double>> chunks{mha(veil::narrow(x, 1, 0, 7), mask::causal(), &cache)};
    for (Index t = 7; t < L; ++t) chunks.push_back(mha(veil::narrow(x, 1, t, 1), mask::causal(), &cache));
    CHECK(max_difference(veil::cat(chunks, 1), full) < 1e-12);
  }
}

TEST_CASE("a cached step is differentiable in its own query key and value", "[nn][mha][kv_cache]") {
  veil::Generator generator(14);
  nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = 4, .num_heads = 2}, generator);
  nn::KVCache<double> cache;
  {
    veil::NoGradGuard no_grad;
    mha(veil::randn<double>({1, 3, 4}, generator), mask::causal(), &cache);
  }
  const Tensor<double> step = randn_grad({1, 1, 4}, generator);
  veil::sum(mha(step, mask::causal(), &cache)).backward();
  CHECK(step.grad().defined());
  CHECK(mha.in_proj_weight.grad().defined());
  CHECK(cache.length() == 4);
  CHECK_THROWS_MATCHES(cache.append(veil::zeros<double>({2, 2, 1, 2}), veil::zeros<double>({2, 2, 1, 2})), veil::ShapeError,
                       MessageContains("the cache holds keys [1, 2, 4, 2]"));
}

TEST_CASE("forward_with_weights returns the plain forward output and probabilities that sum to one over kept keys", "[nn][mha]") {
  veil::Generator generator(15);
  nn::MultiHeadAttention<double> mha(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2}, generator);
  randomise(mha, generator, 0.5);
  const Tensor<double> x = veil::randn<double>({2, 5, 8}, generator);
  const mask::Mask m = mask::causal() & mask::key_padding({5, 3});
  const auto per_head = mha.forward_with_weights(x, m, nn::AttentionWeights::per_head);
  const auto averaged = mha.forward_with_weights(x, m);
  CHECK(max_difference(per_head.output, mha(x, m)) < 1e-12);
  REQUIRE(per_head.weights.shape() == veil::Shape{2, 2, 5, 5});
  REQUIRE(averaged.weights.shape() == veil::Shape{2, 5, 5});
  CHECK(max_difference(averaged.weights, veil::mean(per_head.weights, {1})) < 1e-15);
  const Tensor<bool> keep = mask::materialize(m, 2, 2, 5, 5);
  for (Index row = 0; row < 2 * 2 * 5; ++row) {
    double total = 0;
    for (Index j = 0; j < 5; ++j) {
      const double w = per_head.weights.data()[row * 5 + j];
      if (!keep.data()[row * 5 + j]) CHECK(w == 0.0);
      total += w;
    }
    CHECK(total == Approx(1.0).epsilon(1e-12));
  }
}

TEST_CASE("attention dropout applies in training only and needs a generator", "[nn][mha][dropout]") {
  veil::Generator generator(16);
  nn::MultiHeadAttention<float> mha(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2, .dropout = 0.5, .generator = &generator});
  const Tensor<float> x = veil::randn<float>({1, 6, 8}, generator);
  const auto first = mha(x).to_vector(), second = mha(x).to_vector();
  CHECK(first != second);  // a fresh dropout seed per call
  mha.eval();
  CHECK(mha(x).to_vector() == mha(x).to_vector());

  nn::MultiHeadAttention<float> no_generator(nn::MultiHeadAttentionOptions{.embed_dim = 8, .num_heads = 2, .dropout = 0.5});
  CHECK_THROWS_MATCHES(no_generator(x), veil::ValueError, MessageContains("needs MultiHeadAttentionOptions.generator"));
  no_generator.eval();
  CHECK_NOTHROW(no_generator(x));
}

TEST_CASE("MultiHeadAttention rejects bad options and inputs with messages naming them", "[nn][mha][errors]") {
  using Options = nn::MultiHeadAttentionOptions;
  CHECK_THROWS_MATCHES(nn::MultiHeadAttention(Options{.embed_dim = 10, .num_heads = 3}), veil::ValueError,
                       MessageContains("embed_dim (10) must be divisible by num_heads (3)"));
  CHECK_THROWS_MATCHES(nn::MultiHeadAttention(Options{.embed_dim = 12, .num_heads = 6, .num_kv_heads = 4}), veil::ValueError,
                       MessageContains("num_heads (6) must be a multiple of num_kv_heads (4)"));
  CHECK_THROWS_MATCHES(nn::MultiHeadAttention(Options{.embed_dim = 8, .num_heads = 2, .dropout = 1.5}), veil::ValueError,
                       MessageContains("dropout must be in [0, 1), got 1.5"));

  nn::MultiHeadAttention mha(Options{.embed_dim = 8, .num_heads = 2, .kdim = 5});
  CHECK_THROWS_MATCHES(mha(veil::zeros<float>({5, 8})), veil::ShapeError,
                       MessageContains("x must be [B, L, 8] (embed_dim = 8, batch first), got shape [5, 8]"));
  CHECK_THROWS_MATCHES(mha(veil::zeros<float>({2, 5, 6})), veil::ShapeError,
                       MessageContains("got shape [2, 5, 6]"));
  const Tensor<float> query = veil::zeros<float>({2, 3, 8});
  CHECK_THROWS_MATCHES(mha(query, veil::zeros<float>({2, 4, 8}), veil::zeros<float>({2, 4, 8})), veil::ShapeError,
                       MessageContains("key must be [B, Lk, 5] (kdim = 5, batch first), got shape [2, 4, 8]"));
  CHECK_THROWS_MATCHES(mha(query, veil::zeros<float>({3, 4, 5}), veil::zeros<float>({3, 4, 8})), veil::ShapeError,
                       MessageContains("the same batch size B"));
  CHECK_THROWS_MATCHES(mha(query, veil::zeros<float>({2, 4, 5}), veil::zeros<float>({2, 3, 8})), veil::ShapeError,
                       MessageContains("key and value must have the same length Lk, got key [2, 4, 5] and value [2, 3, 8]"));
  CHECK_THROWS_AS(mha(query, veil::zeros<float>({2, 4, 5}), veil::zeros<float>({2, 4, 8}), mask::key_padding({4, 4, 4})),
                  veil::MaskError);
}

TEST_CASE("MultiHeadAttention on zero-length inputs returns shaped outputs and zero or bias-only gradients",
          "[nn][mha][zero_size]") {
  veil::Generator generator(14);
  const Index B = 2, E = 8;
  nn::MultiHeadAttention<float> mha(nn::MultiHeadAttentionOptions{.embed_dim = E, .num_heads = 2, .num_kv_heads = 1},
                                    generator);
  randomise(mha, generator, 0.5);

  SECTION("self-attention over L = 0: output [B, 0, E] and every parameter gradient exactly 0") {
    auto x = veil::zeros<float>({B, 0, E}).set_requires_grad(true);
    const Tensor<float> y = mha(x, mask::causal());
    REQUIRE(y.shape() == veil::Shape{B, 0, E});
    veil::sum(y).backward();
    for (const auto& [name, parameter] : mha.named_parameters()) {
      INFO(name);
      REQUIRE(parameter.grad().defined());
      CHECK(parameter.grad().to_vector() == std::vector<float>(static_cast<std::size_t>(parameter.numel()), 0.0f));
    }
  }
  SECTION("cross-attention over Lk = 0: every output row is out_proj.bias, and only that bias gets a gradient") {
    auto query = veil::randn<float>({B, 3, E}, generator).set_requires_grad(true);
    const Tensor<float> memory = veil::zeros<float>({B, 0, E});
    const Tensor<float> y = mha(query, memory, memory);
    REQUIRE(y.shape() == veil::Shape{B, 3, E});
    const auto values = y.to_vector(), bias = mha.out_proj->bias.to_vector();
    for (std::size_t e = 0; e < values.size(); ++e) CHECK(values[e] == bias[e % E]);
    veil::sum(y).backward();
    CHECK(query.grad().to_vector() == std::vector<float>(static_cast<std::size_t>(query.numel()), 0.0f));
    for (const auto& [name, parameter] : mha.named_parameters()) {
      INFO(name);
      const float expected = name == "out_proj.bias" ? static_cast<float>(B * 3) : 0.0f;
      CHECK(parameter.grad().to_vector() == std::vector<float>(static_cast<std::size_t>(parameter.numel()), expected));
    }
  }
}

// nn::TransformerBlock: state dict names, checkpoint round trip, packed documents, padding masks,
// KV-cache decoding, dropout and gradcheck.
#include <veil/autograd.hpp>
#include <veil/nn.hpp>

#include <catch2/catch.hpp>

#include "support/modules.hpp"
#include "support/threads.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <stdexcept>
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

/// One training step of a model that belongs to `seed` alone: weights, input, targets and the
/// dropout masks all come from its own Generator. Returns the bit patterns of the loss, the
/// output, dLoss/dx and every parameter's gradient (in name order).
std::vector<std::uint32_t> training_step(std::uint64_t seed) {
  // One intra-op thread: every parallel loop is then serial, so a step performs exactly the same
  // floating-point operations in the same order on whichever thread runs it, and any difference
  // from the serial result can only come from state shared between threads.
  const veil_test::ThreadCountScope one_thread(1);
  constexpr Index B = 2, L = 70, E = 32;  // L: a full and a partial query tile of the fused kernel
  veil::Generator generator(seed);
  nn::TransformerBlock<float> block(nn::TransformerBlockOptions{
      .embed_dim = E, .num_heads = 4, .num_kv_heads = 2, .dropout = 0.1, .attention_dropout = 0.1,
      .generator = &generator});
  randomise(block, generator, 0.2);
  const Tensor<float> x = veil::randn<float>({B, L, E}, generator).set_requires_grad(true);
  std::vector<std::int64_t> classes(static_cast<std::size_t>(B * L));
  for (auto& c : classes) c = static_cast<std::int64_t>(generator.next_bits() % E);
  const auto targets = veil::from_vector<std::int64_t>(classes, {B * L});
  const Tensor<float> y = block(x, mask::causal() & mask::key_padding({L, 45}));
  const Tensor<float> loss = veil::cross_entropy(y.reshape({B * L, E}), targets);
  loss.backward();
  std::vector<std::uint32_t> bits;
  const auto append = [&bits](const Tensor<float>& t) {
    // Thrown rather than REQUIRE'd: Catch2's macros are not thread-safe, run_together rethrows it.
    if (!t.defined()) throw std::logic_error("training_step: a gradient is missing");
    for (float value : t.to_vector()) bits.push_back(std::bit_cast<std::uint32_t>(value));
  };
  append(loss);
  append(y);
  append(x.grad());
  for (const auto& [name, parameter] : block.named_parameters()) append(parameter.grad());
  return bits;
}



}  // namespace

TEST_CASE("TransformerBlock state_dict names are the documented ones", "[nn][transformer_block]") {
  nn::TransformerBlock block(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2});
  std::vector<std::string> names;
  for (const auto& [name, tensor] : block.state_dict()) names.push_back(name + " " + veil::to_string(tensor.shape()));
  CHECK(names == std::vector<std::string>{
                     "attn.in_proj_bias [24]", "attn.in_proj_weight [24, 8]", "attn.out_proj.bias [8]",
                     "attn.out_proj.weight [8, 8]", "ln1.bias [8]", "ln1.weight [8]", "ln2.bias [8]", "ln2.weight [8]",
                     "mlp.0.bias [32]", "mlp.0.weight [32, 8]", "mlp.2.bias [8]", "mlp.2.weight [8, 32]"});
  nn::TransformerBlock no_bias(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .bias = false});
  CHECK(no_bias.state_dict().size() == 6);
}

TEST_CASE("TransformerBlock load_state_dict round trip restores every parameter", "[nn][transformer_block]") {
  veil::Generator a(1), b(2);
  nn::TransformerBlock source(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &a});
  nn::TransformerBlock target(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &b});
  randomise(source, a, 0.3);
  const Tensor<float> x = veil::randn<float>({2, 4, 8}, a);
  CHECK(max_difference(source(x), target(x)) > 1e-3);
  const Tensor<float> handle = target.attn->in_proj_weight;
  target.load_state_dict(source.state_dict());
  CHECK(max_difference(source(x), target(x)) == 0.0);
  CHECK(handle.to_vector() == source.attn->in_proj_weight.to_vector());  // copied into the existing storage
  for (const auto& [name, tensor] : source.state_dict())
    CHECK(tensor.to_vector() == target.state_dict().at(name).to_vector());

  auto wrong = source.state_dict();
  wrong["mlp.0.weight"] = veil::zeros<float>({8, 8});
  CHECK_THROWS_MATCHES(target.load_state_dict(wrong), veil::IoError,
                       MessageContains("size mismatch for mlp.0.weight: checkpoint [8, 8] vs model [32, 8]"));
}

TEST_CASE("TransformerBlock with documents and causal equals running each document separately", "[nn][transformer_block]") {
  veil::Generator generator(3);
  nn::TransformerBlock<double> block(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &generator});
  randomise(block, generator, 0.3);
  const std::vector<Index> lengths{3, 5, 1, 4};
  const Tensor<double> packed = veil::randn<double>({1, 13, 8}, generator);
  const Tensor<double> together = block(packed, mask::documents(lengths) & mask::causal());
  Index start = 0;
  for (Index length : lengths) {
    const Tensor<double> alone = block(veil::narrow(packed, 1, start, length), mask::causal());
    INFO("document at " << start << " of length " << length);
    CHECK(max_difference(veil::narrow(together, 1, start, length).contiguous(), alone) < 1e-12);
    start += length;
  }
}

TEST_CASE("TransformerBlock as an encoder with key padding ignores the padded positions", "[nn][transformer_block]") {
  veil::Generator generator(4);
  nn::TransformerBlock<double> block(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 4, .num_kv_heads = 2, .generator = &generator});
  randomise(block, generator, 0.3);
  Tensor<double> x = veil::randn<double>({2, 6, 8}, generator);
  const mask::Mask padding = mask::key_padding({6, 4});
  const Tensor<double> before = block(x, padding);
  veil::detail::copy_into(veil::narrow(veil::narrow(x, 0, 1, 1), 1, 4, 2), veil::full<double>({1, 2, 8}, 1e3));
  const Tensor<double> after = block(x, padding);
  CHECK(max_difference(before, after) > 1.0);  // the padded rows themselves changed
  CHECK(max_difference(veil::narrow(before, 1, 0, 4).contiguous(), veil::narrow(after, 1, 0, 4).contiguous()) < 1e-12);
  // The unpadded row 1 equals row 1 run alone at its true length.
  const Tensor<double> alone = block(veil::narrow(veil::narrow(x, 0, 1, 1), 1, 0, 4).contiguous());
  CHECK(max_difference(veil::narrow(veil::narrow(after, 0, 1, 1), 1, 0, 4).contiguous(), alone) < 1e-12);
}

TEST_CASE("TransformerBlock decodes token by token with a KV cache like the full causal forward", "[nn][transformer_block][kv_cache]") {
  veil::Generator generator(5);
  nn::TransformerBlock<double> block(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2, .generator = &generator});
  randomise(block, generator, 0.3);
  const Tensor<double> x = veil::randn<double>({2, 20, 8}, generator);
  const Tensor<double> full = block(x, mask::causal());
  veil::NoGradGuard no_grad;
  nn::KVCache<double> cache;
  std::vector<Tensor<double>> steps;
  for (Index t = 0; t < 20; ++t) steps.push_back(block(veil::narrow(x, 1, t, 1), mask::causal(), &cache));
  CHECK(max_difference(veil::cat(steps, 1), full) < 1e-12);
}

TEST_CASE("TransformerBlock dropout acts in training and is the identity in eval", "[nn][transformer_block][dropout]") {
  veil::Generator generator(6);
  nn::TransformerBlock<float> block(nn::TransformerBlockOptions{
      .embed_dim = 8, .num_heads = 2, .dropout = 0.3, .attention_dropout = 0.2, .generator = &generator});
  nn::TransformerBlock<float> plain(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2});
  plain.load_state_dict(block.state_dict());
  const Tensor<float> x = veil::randn<float>({2, 5, 8}, generator);
  CHECK(max_difference(block(x, mask::causal()), plain(x, mask::causal())) > 1e-3);
  block.eval();
  CHECK(!block.mlp->is_training());
  CHECK(max_difference(block(x, mask::causal()), plain(x, mask::causal())) == 0.0);
}

TEST_CASE("TransformerBlock gradients pass gradcheck in double", "[nn][transformer_block][gradcheck]") {
  veil::Generator generator(7);
  nn::TransformerBlock<double> block(nn::TransformerBlockOptions{.embed_dim = 4, .num_heads = 2, .hidden_dim = 6,
                                                                 .gelu = veil::GeluApproximation::tanh, .generator = &generator});
  randomise(block, generator, 0.3);
  std::vector<Tensor<double>*> handles{&block.ln1->weight, &block.ln1->bias, &block.attn->in_proj_weight,
                                       &block.attn->in_proj_bias, &block.attn->out_proj->weight, &block.attn->out_proj->bias,
                                       &block.ln2->weight, &block.ln2->bias};
  auto first = std::dynamic_pointer_cast<nn::Linear<double>>(block.mlp->children()[0].second);
  auto second = std::dynamic_pointer_cast<nn::Linear<double>>(block.mlp->children()[2].second);
  REQUIRE(first);
  REQUIRE(second);
  for (auto* handle : {&first->weight, &first->bias, &second->weight, &second->bias}) handles.push_back(handle);
  REQUIRE(handles.size() == block.named_parameters().size());
  Tensor<double> x = veil::randn<double>({1, 3, 4}, generator);
  x.set_requires_grad(true);
  std::vector<Tensor<double>> inputs{x};
  for (auto* handle : handles) inputs.push_back(*handle);
  const auto result = veil::gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        for (std::size_t p = 0; p < handles.size(); ++p) *handles[p] = in[p + 1];
        return block(in[0], mask::causal());
      },
      inputs);
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("TransformerBlock rejects an input of the wrong rank or width", "[nn][transformer_block][errors]") {
  nn::TransformerBlock block(nn::TransformerBlockOptions{.embed_dim = 8, .num_heads = 2});
  CHECK_THROWS_MATCHES(block(veil::zeros<float>({4, 8})), veil::ShapeError,
                       MessageContains("x must be [B, L, 8] (embed_dim = 8), got [4, 8]"));
  CHECK_THROWS_MATCHES(block(veil::zeros<float>({1, 4, 6})), veil::ShapeError, MessageContains("got [1, 4, 6]"));
  CHECK_THROWS_MATCHES(nn::TransformerBlock(nn::TransformerBlockOptions{.embed_dim = 6, .num_heads = 4}), veil::ValueError,
                       MessageContains("embed_dim (6) must be divisible by num_heads (4)"));
}

TEST_CASE("10 threads training their own TransformerBlock get the serial loss and gradients bit for bit",
          "[nn][transformer_block][threads]") {
  constexpr int threads = 10;
  std::vector<std::vector<std::uint32_t>> serial, concurrent(threads);
  for (int t = 0; t < threads; ++t) serial.push_back(training_step(static_cast<std::uint64_t>(500 + t)));
  REQUIRE(serial[0] != serial[1]);  // the models really differ, so a mix-up between threads would show
  veil_test::run_together(threads, [&](int t) {
    concurrent[static_cast<std::size_t>(t)] = training_step(static_cast<std::uint64_t>(500 + t));
  });
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(concurrent[static_cast<std::size_t>(t)] == serial[static_cast<std::size_t>(t)]);
  }
}

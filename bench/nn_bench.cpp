// nn::MultiHeadAttention forward + backward against its own parts timed alone, in the same run:
//
//   BM_MhaModule  mha(x, mask::causal()) then backward: x [B, L, E] and every parameter get
//                 gradients (packed in_proj GEMM + bias, head split views, fused attention, head
//                 merge copy, out_proj GEMM + bias);
//   BM_MhaParts   the same arithmetic without the module: the four projection GEMMs
//                 ([B·L, E] x [E, E] for q, k, v and out) and the fused causal attention on
//                 ready-made [B, H, L, D] tensors, each forward then backward on its own;
//   BM_MhaPartsPacked  the same with q, k and v projected by one [E, 3E] GEMM as the module does:
//                 the stricter baseline, whose ratio is the cost of the module's glue alone (bias
//                 adds, head split/merge, autograd bookkeeping).
// at B = 8, L = 512, E = 512, H = 8 (D = 64), fp32. Target: module / parts <= 1.25. The closing
// "ratios" block divides the two (medians when run with --benchmark_repetitions).
//
//   nanogpt/veil/cpu_config, nanogpt/veil/gpu_config
//                 one training step of examples/nanogpt (batch, forward, cross-entropy, backward,
//                 gradient clipping, AdamW) in nanoGPT's documented CPU configuration (4 layers,
//                 4 heads, 128 embd, block 64, batch 12) and its GPU one (6 layers, 6 heads, 384
//                 embd, block 256, batch 64, dropout 0.2), on the text of --corpus=PATH (default:
//                 the fortune files when installed, else generated text). PyTorch's side is
//                 examples/nanogpt/reference/train_reference.py, run by bench/run.
//
//   build/bench/nn_bench [--corpus=PATH] --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <veil/attention.hpp>
#include <veil/nn.hpp>

#include <benchmark/benchmark.h>

#include "median_reporter.hpp"
#include "../examples/nanogpt/train.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using veil::Index;
using veil::Tensor;
namespace nn = veil::nn;

constexpr Index kBatch = 8, kLength = 512, kEmbed = 512, kHeads = 8, kHeadDim = kEmbed / kHeads;

/// FLOPs of one forward + backward: 4 projections (2·B·L·E² each, backward twice that) and causal
/// attention (4·B·H·L²·D dense forward, 3.5x with backward, about half the pairs kept).
double flops_per_iteration() {
  const double projections = 4 * 3 * 2.0 * kBatch * kLength * kEmbed * kEmbed;
  const double attention = 14.0 * kBatch * kHeads * kLength * kLength * kHeadDim * 0.5;
  return projections + attention;
}

Tensor<float> leaf(const veil::Shape& shape, veil::Generator& generator) {
  Tensor<float> t = veil::randn<float>(shape, generator);
  t.set_requires_grad(true);
  return t;
}

void BM_MhaModule(benchmark::State& state) {
  veil::Generator generator(1);
  nn::MultiHeadAttention<float> mha(nn::MultiHeadAttentionOptions{.embed_dim = kEmbed, .num_heads = kHeads}, generator);
  const Tensor<float> x = leaf({kBatch, kLength, kEmbed}, generator);
  const Tensor<float> grad_out = veil::randn<float>({kBatch, kLength, kEmbed}, generator);
  {
    // Checked once against the module's reference path (need-weights: the materialised
    // attention), outside the timed loop.
    veil::NoGradGuard no_grad;
    const auto fused = mha(x, veil::mask::causal()).to_vector();
    const auto reference = mha.forward_with_weights(x, veil::mask::causal()).output.to_vector();
    for (std::size_t e = 0; e < fused.size(); ++e)
      if (!(std::abs(fused[e] - reference[e]) < 1e-4f))
        throw std::runtime_error("nn_bench: the module's fused and reference outputs differ");
  }
  for (auto _ : state) {
    mha.zero_grad();
    x.zero_grad();
    Tensor<float> y = mha(x, veil::mask::causal());
    y.backward(grad_out);
    benchmark::DoNotOptimize(x.grad().data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(flops_per_iteration() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_MhaParts(benchmark::State& state) {
  veil::Generator generator(2);
  const veil::Shape rows{kBatch, kLength, kEmbed}, heads{kBatch, kHeads, kLength, kHeadDim};
  std::vector<Tensor<float>> inputs, weights;
  for (int p = 0; p < 4; ++p) inputs.push_back(leaf(rows, generator)), weights.push_back(leaf({kEmbed, kEmbed}, generator));
  const Tensor<float> q = leaf(heads, generator), k = leaf(heads, generator), v = leaf(heads, generator);
  const Tensor<float> grad_rows = veil::randn<float>(rows, generator), grad_heads = veil::randn<float>(heads, generator);
  for (auto _ : state) {
    for (int p = 0; p < 4; ++p) {
      inputs[p].zero_grad(), weights[p].zero_grad();
      veil::matmul(inputs[p], veil::transpose(weights[p], 0, 1)).backward(grad_rows);
    }
    q.zero_grad(), k.zero_grad(), v.zero_grad();
    veil::scaled_dot_product_attention(q, k, v, veil::mask::causal()).backward(grad_heads);
    benchmark::DoNotOptimize(q.grad().data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(flops_per_iteration() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_MhaPartsPacked(benchmark::State& state) {
  veil::Generator generator(3);
  const veil::Shape rows{kBatch, kLength, kEmbed}, heads{kBatch, kHeads, kLength, kHeadDim};
  const Tensor<float> x = leaf(rows, generator), packed_weight = leaf({3 * kEmbed, kEmbed}, generator);
  const Tensor<float> merged = leaf(rows, generator), out_weight = leaf({kEmbed, kEmbed}, generator);
  const Tensor<float> q = leaf(heads, generator), k = leaf(heads, generator), v = leaf(heads, generator);
  const Tensor<float> grad_packed = veil::randn<float>({kBatch, kLength, 3 * kEmbed}, generator);
  const Tensor<float> grad_rows = veil::randn<float>(rows, generator), grad_heads = veil::randn<float>(heads, generator);
  for (auto _ : state) {
    x.zero_grad(), packed_weight.zero_grad(), merged.zero_grad(), out_weight.zero_grad();
    veil::matmul(x, veil::transpose(packed_weight, 0, 1)).backward(grad_packed);
    veil::matmul(merged, veil::transpose(out_weight, 0, 1)).backward(grad_rows);
    q.zero_grad(), k.zero_grad(), v.zero_grad();
    veil::scaled_dot_product_attention(q, k, v, veil::mask::causal()).backward(grad_heads);
    benchmark::DoNotOptimize(q.grad().data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(flops_per_iteration() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Named like libtorch_bench's torch::nn::MultiheadAttention case, so the report can join them.
constexpr const char* kModule = "mha/veil/fwd_bwd/causal/B8xL512xE512xH8";
constexpr const char* kParts = "mha/veil_parts/fwd_bwd/causal/B8xL512xE512xH8";
constexpr const char* kPartsPacked = "mha/veil_parts_packed/fwd_bwd/causal/B8xL512xE512xH8";
BENCHMARK(BM_MhaModule)->Name(kModule)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MhaParts)->Name(kParts)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MhaPartsPacked)->Name(kPartsPacked)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- one nanogpt training step -------------------------------------------------------------------

std::string corpus_path;  // --corpus=PATH

nanogpt::Corpus bench_corpus() {
  namespace fs = std::filesystem;
  const std::string path = !corpus_path.empty() ? corpus_path : "/usr/share/games/fortunes";
  if (fs::exists(path)) return nanogpt::load_corpus(path, std::nullopt);
  // Generated text with a fortune-like vocabulary size: the step's cost depends on the vocabulary
  // size and the shapes, not on the text.
  std::u32string text;
  veil::Generator generator(5);
  for (int c = 0; c < 400000; ++c) text += static_cast<char32_t>(32 + generator.next_bits() % 90);
  const auto vocabulary = nanogpt::Vocabulary::of_text(text);
  const auto tokens = vocabulary.encode(text, "the generated text");
  const std::size_t cut = tokens.size() * 9 / 10;
  return {vocabulary, {{tokens.begin(), tokens.begin() + cut}, {}}, {{tokens.begin() + cut, tokens.end()}, {}}};
}

void nanogpt_step(benchmark::State& state, nanogpt::GptConfig config, Index batch_size) {
  const nanogpt::Corpus corpus = bench_corpus();
  config.vocab_size = corpus.vocabulary.size();
  veil::Generator init(1337), data(1338), dropout(1339);
  nanogpt::Gpt model(config, init, &dropout);
  veil::optim::AdamW<float> optimizer(veil::optim::weight_decay_groups(
      model.named_parameters(), veil::optim::AdamWOptions{1e-3, 0.9, 0.99, 1e-8, 0.1}));
  const auto step = [&] {
    const auto batch = nanogpt::window_batch(corpus.train, batch_size, config.block_size, data);
    const auto logits = model.forward(batch.inputs, batch.positions, batch.mask);
    const auto loss = veil::cross_entropy(logits, batch.targets);
    loss.backward();
    veil::optim::clip_grad_norm(model.parameters(), 1.0);
    optimizer.step();
    optimizer.zero_grad();
    return loss.item();
  };
  // Checked once, outside the timed loop: a fresh model predicts about uniformly, loss ≈ ln V.
  const double first_loss = step(), uniform = std::log(static_cast<double>(config.vocab_size));
  if (!(std::abs(first_loss - uniform) < 0.1 * uniform))
    throw std::runtime_error("nn_bench: the first nanogpt loss is " + std::to_string(first_loss) + ", expected about " +
                             std::to_string(uniform));
  for (auto _ : state) benchmark::DoNotOptimize(step());
  state.counters["tokens_per_second"] = benchmark::Counter(static_cast<double>(batch_size * config.block_size),
                                                           benchmark::Counter::kIsIterationInvariantRate);
}

void nanogpt_cpu_config(benchmark::State& state) {
  nanogpt_step(state, nanogpt::GptConfig{.block_size = 64, .n_layer = 4, .n_head = 4, .n_embd = 128, .dropout = 0.0}, 12);
}
void nanogpt_gpu_config(benchmark::State& state) {
  nanogpt_step(state, nanogpt::GptConfig{.block_size = 256, .n_layer = 6, .n_head = 6, .n_embd = 384, .dropout = 0.2}, 64);
}

BENCHMARK(nanogpt_cpu_config)->Name("nanogpt/veil/cpu_config")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(nanogpt_gpu_config)
    ->Name("nanogpt/veil/gpu_config")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(2)
    ->Repetitions(1);  // seconds per iteration: two iterations are the measurement

/// Module time / parts time.
class RatioReporter : public MedianReporter {
 protected:
  void write_ratios(std::ostream& out) override {
    if (!has(kModule) || !has(kParts)) return;
    const double module = summary(kModule).seconds, parts = summary(kParts).seconds;
    out << "  MultiHeadAttention fwd+bwd B=8 L=512 E=512 H=8 causal: " << module * 1e3
        << " ms vs projections + fused attention alone " << parts * 1e3 << " ms: ratio " << module / parts
        << " (target <= 1.25)\n";
    if (has(kPartsPacked)) {
      const double packed = summary(kPartsPacked).seconds;
      out << "  the same against one packed q/k/v GEMM + out GEMM + fused attention " << packed * 1e3
          << " ms: ratio " << module / packed << " (the module's glue)\n";
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int a = 0; a < argc; ++a) {
    if (std::strncmp(argv[a], "--corpus=", 9) == 0) corpus_path = argv[a] + 9;
    else args.push_back(argv[a]);
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

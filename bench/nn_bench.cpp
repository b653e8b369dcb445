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
//   build/bench/nn_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <veil/attention.hpp>
#include <veil/nn.hpp>

#include <benchmark/benchmark.h>

#include "median_reporter.hpp"

#include <cmath>
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
    const Tensor<float> y = mha(x, veil::mask::causal());
    for (float value : y.to_vector())
      if (!std::isfinite(value)) throw std::runtime_error("nn_bench: the module's output is not finite");
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

BENCHMARK(BM_MhaModule)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MhaParts)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MhaPartsPacked)->Unit(benchmark::kMillisecond)->UseRealTime();

/// Module time / parts time.
class RatioReporter : public MedianReporter {
 protected:
  void write_ratios(std::ostream& out) override {
    if (!has("BM_MhaModule") || !has("BM_MhaParts")) return;
    const double module = summary("BM_MhaModule").seconds, parts = summary("BM_MhaParts").seconds;
    out << "  MultiHeadAttention fwd+bwd B=8 L=512 E=512 H=8 causal: " << module * 1e3
        << " ms vs projections + fused attention alone " << parts * 1e3 << " ms: ratio " << module / parts
        << " (target <= 1.25)\n";
    if (has("BM_MhaPartsPacked")) {
      const double packed = summary("BM_MhaPartsPacked").seconds;
      out << "  the same against one packed q/k/v GEMM + out GEMM + fused attention " << packed * 1e3
          << " ms: ratio " << module / packed << " (the module's glue)\n";
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

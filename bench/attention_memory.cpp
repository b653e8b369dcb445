// Peak memory of fused causal attention forward+backward at B = 1, H = 8, L = 16384, D = 64, in
// a process of its own so the resident-set high-water mark belongs to this case alone. The
// reference path would need B·H·L²·4 bytes = 8.6 GB for each of its score-sized tensors.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <veil/veil.hpp>

namespace {

void BM_FusedCausalForwardBackwardL16384(benchmark::State& state) {
  const veil::Index batch = 1, heads = 8, length = 16384, head_dim = 64;
  veil::Generator generator(1);
  auto q = veil::randn<float>({batch, heads, length, head_dim}, generator).set_requires_grad();
  auto k = veil::randn<float>({batch, heads, length, head_dim}, generator).set_requires_grad();
  auto v = veil::randn<float>({batch, heads, length, head_dim}, generator).set_requires_grad();
  const auto grad_out = veil::randn<float>({batch, heads, length, head_dim}, generator);
  for (auto _ : state) {
    auto out = veil::scaled_dot_product_attention(q, k, v, veil::mask::causal());
    out.backward(grad_out);
    benchmark::DoNotOptimize(q.grad().data());
    q.zero_grad(), k.zero_grad(), v.zero_grad();
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["peak_RSS_MB"] = static_cast<double>(usage.ru_maxrss) / 1024.0;
  state.counters["dense_GFLOPs"] = benchmark::Counter(14.0 * batch * heads * length * length * head_dim * 1e-9,
                                                      benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_FusedCausalForwardBackwardL16384)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace

BENCHMARK_MAIN();

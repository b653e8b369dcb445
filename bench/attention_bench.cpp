// Fused attention against the machine's SGEMM rate and against the reference (materialised)
// path, at the shape B = 4, H = 8, D = 64, fp32. Counters:
//   dense_GFLOPs      dense FLOPs (4·B·H·Lq·Lk·D forward, ×3.5 forward+backward) per second
//   effective_GFLOPs  the same over kept pairs only
//   sgemm_fraction    dense_GFLOPs ÷ Eigen SGEMM rate (1024³) measured in this process
// Ratios between mask kinds (causal ÷ none, ...) come from the same run's medians.
#include <benchmark/benchmark.h>

#include <veil/veil.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>

namespace {

using veil::Index;
using veil::Tensor;

constexpr Index kBatch = 4, kHeads = 8, kHeadDim = 64;

/// Median of five 1024³ Eigen SGEMMs with the current thread count, in GFLOP/s.
double sgemm_rate() {
  static const double rate = [] {
    Eigen::MatrixXf a = Eigen::MatrixXf::Random(1024, 1024), b = Eigen::MatrixXf::Random(1024, 1024), c(1024, 1024);
    c.noalias() = a * b;
    std::vector<double> rates;
    for (int r = 0; r < 5; ++r) {
      const auto start = std::chrono::steady_clock::now();
      c.noalias() = a * b;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      rates.push_back(2.0 * 1024 * 1024 * 1024 / seconds / 1e9);
    }
    std::sort(rates.begin(), rates.end());
    return rates[2];
  }();
  return rate;
}

enum MaskKind { kNone, kCausal, kDocuments4Causal, kKeyPadding75, kAllow50 };
const char* const kMaskNames[] = {"none", "causal", "documents4&causal", "key_padding75", "allow50"};

veil::mask::Mask make_mask(int kind, Index length) {
  switch (kind) {
    case kCausal: return veil::mask::causal();
    case kDocuments4Causal: return veil::mask::documents(std::vector<Index>(4, length / 4)) & veil::mask::causal();
    case kKeyPadding75: return veil::mask::key_padding(std::vector<Index>(kBatch, length * 3 / 4));
    case kAllow50: {
      veil::Generator generator(7);
      const Tensor<float> uniform = veil::rand<float>({length, length}, generator);
      Tensor<bool> allowed = Tensor<bool>::empty({length, length});
      for (Index e = 0; e < length * length; ++e) allowed.data()[e] = uniform.data()[e] < 0.5f;
      return veil::mask::allow(allowed);
    }
    default: return veil::mask::none();
  }
}

double kept_fraction(const veil::mask::Mask& mask, Index length) {
  const Tensor<bool> keep = veil::mask::materialize(mask, kBatch, 1, length, length);
  const std::vector<bool> values(keep.data(), keep.data() + keep.numel());
  return static_cast<double>(std::count(values.begin(), values.end(), true)) / static_cast<double>(values.size());
}

struct Inputs {
  Tensor<float> q, k, v, grad_out;
};

Inputs make_inputs(Index length, bool requires_grad) {
  veil::Generator generator(1);
  Inputs in{veil::randn<float>({kBatch, kHeads, length, kHeadDim}, generator),
            veil::randn<float>({kBatch, kHeads, length, kHeadDim}, generator),
            veil::randn<float>({kBatch, kHeads, length, kHeadDim}, generator),
            veil::randn<float>({kBatch, kHeads, length, kHeadDim}, generator)};
  if (requires_grad) in.q.set_requires_grad(), in.k.set_requires_grad(), in.v.set_requires_grad();
  return in;
}

/// Fused against reference on a small length, outside any timed loop.
void check_against_reference(int kind) {
  static std::map<int, bool> checked;
  if (checked[kind]) return;
  checked[kind] = true;
  const Index length = 256;
  const Inputs in = make_inputs(length, false);
  const auto mask = make_mask(kind, length);
  const auto fused = veil::scaled_dot_product_attention(in.q, in.k, in.v, mask).to_vector();
  const auto reference = veil::attention::reference_attention(in.q, in.k, in.v, mask).output.to_vector();
  double worst = 0;
  for (std::size_t e = 0; e < fused.size(); ++e) worst = std::max(worst, double(std::abs(fused[e] - reference[e])));
  if (!(worst < 1e-4)) {
    std::fprintf(stderr, "attention_bench: fused and reference differ by %g for mask %s\n", worst, kMaskNames[kind]);
    std::exit(1);
  }
}

void set_counters(benchmark::State& state, double flops_per_iteration, double kept) {
  const double dense = flops_per_iteration;
  state.counters["dense_GFLOPs"] = benchmark::Counter(dense * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["effective_GFLOPs"] =
      benchmark::Counter(dense * kept * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["sgemm_GFLOPs"] = sgemm_rate();
}

void BM_Sgemm1024(benchmark::State& state) {
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(1024, 1024), b = Eigen::MatrixXf::Random(1024, 1024), c(1024, 1024);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * 1024 * 1024 * 1024 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_FusedForward(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const Index length = state.range(1);
  check_against_reference(kind);
  const Inputs in = make_inputs(length, false);
  const auto mask = make_mask(kind, length);
  for (auto _ : state) {
    veil::NoGradGuard no_grad;
    benchmark::DoNotOptimize(veil::scaled_dot_product_attention(in.q, in.k, in.v, mask).data());
  }
  state.SetLabel(kMaskNames[kind]);
  set_counters(state, 4.0 * kBatch * kHeads * length * length * kHeadDim, kept_fraction(mask, length));
}

void BM_FusedForwardBackward(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const Index length = state.range(1);
  check_against_reference(kind);
  const Inputs in = make_inputs(length, true);
  const auto mask = make_mask(kind, length);
  for (auto _ : state) {
    auto out = veil::scaled_dot_product_attention(in.q, in.k, in.v, mask);
    out.backward(in.grad_out);
    benchmark::DoNotOptimize(in.q.grad().data());
    in.q.zero_grad(), in.k.zero_grad(), in.v.zero_grad();
  }
  state.SetLabel(kMaskNames[kind]);
  set_counters(state, 14.0 * kBatch * kHeads * length * length * kHeadDim, kept_fraction(mask, length));
}

void BM_ReferenceForwardBackward(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const Index length = state.range(1);
  const Inputs in = make_inputs(length, true);
  const auto mask = make_mask(kind, length);
  for (auto _ : state) {
    auto out = veil::attention::reference_attention(in.q, in.k, in.v, mask).output;
    out.backward(in.grad_out);
    benchmark::DoNotOptimize(in.q.grad().data());
    in.q.zero_grad(), in.k.zero_grad(), in.v.zero_grad();
  }
  state.SetLabel(kMaskNames[kind]);
  set_counters(state, 14.0 * kBatch * kHeads * length * length * kHeadDim, kept_fraction(mask, length));
}

void mask_grid(benchmark::internal::Benchmark* b) {
  for (int kind : {kNone, kCausal, kDocuments4Causal, kKeyPadding75, kAllow50}) b->Args({kind, 2048});
}

BENCHMARK(BM_Sgemm1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FusedForward)->Apply(mask_grid)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FusedForwardBackward)->Apply(mask_grid)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReferenceForwardBackward)->Args({kCausal, 2048})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();

// Attention: veil's fused kernel and its reference (materialised) path over the grid of
// attention_cases.hpp, fp32, both timed in the same process as Eigen's SGEMM. Benchmarks:
//   sgemm/eigen/1024                 the machine's GEMM rate the fractions below refer to
//   attention/fused/<case>           scaled_dot_product_attention (forward, or forward+backward)
//   attention/reference/<case>       reference_attention: mask materialised, matmul → softmax →
//                                    matmul with autograd (skipped where its score tensors would
//                                    not fit the memory budget)
// Counters: dense_GFLOPs (every pair counted), effective_GFLOPs (kept pairs only),
// sgemm_fraction (effective rate ÷ the SGEMM rate measured above), peak_RSS_MB (this case alone).
// Before a mask kind is timed, its fused result (output and the q, k, v gradients) is checked
// against the reference once on a small instance of the case, outside any timed loop.
//
//   build/bench/attention_bench [--grid=quick|full] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <veil/veil.hpp>

#include "attention_cases.hpp"
#include "peak_memory.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

namespace {

using bench::AttentionCase;
using veil::Index;
using veil::Tensor;

/// The reference path keeps about six score-sized tensors alive in forward+backward (scores,
/// masked scores, probabilities and their gradients), three in forward alone.
constexpr double kReferenceMemoryBudget = 6.0 * (1ull << 30);

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

void sgemm(benchmark::State& state) {
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(1024, 1024), b = Eigen::MatrixXf::Random(1024, 1024), c(1024, 1024);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * 1024 * 1024 * 1024 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

struct Inputs {
  Tensor<float> q, k, v, grad_output;
};

Inputs make_inputs(const AttentionCase& c) {
  veil::Generator generator(1);
  const veil::Shape query_shape{c.batch, c.heads, c.query_length, c.head_dim};
  const veil::Shape key_shape{c.batch, c.heads, c.key_length, c.head_dim};
  Inputs in{veil::randn<float>(query_shape, generator), veil::randn<float>(key_shape, generator),
            veil::randn<float>(key_shape, generator), veil::randn<float>(query_shape, generator)};
  if (c.backward) in.q.set_requires_grad(), in.k.set_requires_grad(), in.v.set_requires_grad();
  return in;
}

double max_difference(const Tensor<float>& a, const Tensor<float>& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double worst = x.size() == y.size() ? 0.0 : INFINITY;
  for (std::size_t e = 0; e < x.size() && e < y.size(); ++e)
    worst = std::max(worst, std::abs(static_cast<double>(x[e]) - static_cast<double>(y[e])));
  return worst;
}

/// Fused against reference on a small instance of the case (L = 256, or Lq = 1 against
/// Lk = 256), output and gradients; exits on a mismatch. Once per mask kind and length shape.
void check_against_reference(const AttentionCase& c) {
  static std::set<std::string> checked;
  AttentionCase small = c;
  small.batch = 2, small.heads = 2, small.backward = true;
  small.key_length = 256, small.query_length = c.query_length == c.key_length ? 256 : 1;
  if (!checked.insert(small.name()).second) return;
  const Inputs in = make_inputs(small);
  const auto mask = bench::make_mask(small);
  auto fused = veil::scaled_dot_product_attention(in.q, in.k, in.v, mask);
  fused.backward(in.grad_output);
  const Tensor<float> fused_grads[] = {in.q.grad(), in.k.grad(), in.v.grad()};
  in.q.zero_grad(), in.k.zero_grad(), in.v.zero_grad();
  auto reference = veil::attention::reference_attention(in.q, in.k, in.v, mask).output;
  reference.backward(in.grad_output);
  const double errors[] = {max_difference(fused, reference), max_difference(fused_grads[0], in.q.grad()),
                           max_difference(fused_grads[1], in.k.grad()), max_difference(fused_grads[2], in.v.grad())};
  for (double error : errors)
    if (!(error < 1e-3)) {
      std::fprintf(stderr, "attention_bench: fused and reference differ by %g on %s\n", error, small.name().c_str());
      std::exit(1);
    }
}

void set_counters(benchmark::State& state, const AttentionCase& c) {
  // First: kept_fraction materialises the mask, which is no part of the case's memory.
  state.counters["peak_RSS_MB"] = bench::peak_resident_bytes() / (1 << 20);
  const double gflop = c.dense_flops() * 1e-9, kept = bench::kept_fraction(c);
  state.counters["dense_GFLOPs"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["effective_GFLOPs"] = benchmark::Counter(gflop * kept, benchmark::Counter::kIsIterationInvariantRate);
  // Over kept pairs: the share of the machine's GEMM rate spent on work the mask asks for.
  state.counters["sgemm_fraction"] =
      benchmark::Counter(gflop * kept / sgemm_rate(), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Attention>
void run_case(benchmark::State& state, const AttentionCase& c, Attention attention) {
  check_against_reference(c);
  bench::reset_peak_resident_memory();
  const Inputs in = make_inputs(c);
  const auto mask = bench::make_mask(c);
  for (auto _ : state) {
    if (c.backward) {
      Tensor<float> out = attention(in, mask);
      out.backward(in.grad_output);
      benchmark::DoNotOptimize(in.q.grad().data());
      in.q.zero_grad(), in.k.zero_grad(), in.v.zero_grad();
    } else {
      veil::NoGradGuard no_grad;
      benchmark::DoNotOptimize(attention(in, mask).data());
    }
  }
  set_counters(state, c);
}

void fused(benchmark::State& state, const AttentionCase& c) {
  run_case(state, c, [](const Inputs& in, const veil::mask::Mask& mask) {
    return veil::scaled_dot_product_attention(in.q, in.k, in.v, mask);
  });
}

void reference(benchmark::State& state, const AttentionCase& c) {
  if (const std::string reason = c.skip_reason(c.backward ? 6 : 3, kReferenceMemoryBudget); !reason.empty()) {
    state.SkipWithError(reason.c_str());
    return;
  }
  run_case(state, c, [](const Inputs& in, const veil::mask::Mask& mask) {
    return veil::attention::reference_attention(in.q, in.k, in.v, mask).output;
  });
}

/// Reference cases in the quick grid: the short-L sweep and the L = 2048 forward+backward cases
/// the README compares against; the other reference cases cost seconds each (full grid).
bool reference_in_quick_grid(const AttentionCase& c) {
  using bench::MaskKind;
  if (!c.backward || c.head_dim != 64 || c.fused_only || c.query_length != c.key_length) return false;
  if (c.query_length <= 1024) return true;
  return c.query_length == 2048 &&
         (c.mask == MaskKind::none || c.mask == MaskKind::causal || c.mask == MaskKind::documents_8_causal);
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  const bool full = bench::take_grid_flag(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  benchmark::AddCustomContext("veil_threads", std::to_string(veil::num_threads()));
  benchmark::AddCustomContext("compiler", "g++ " __VERSION__);
  benchmark::AddCustomContext("flags", VEIL_BENCH_FLAGS);
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("grid", full ? "full" : "quick");
  benchmark::RegisterBenchmark("sgemm/eigen/1024", sgemm)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (const AttentionCase& c : bench::attention_cases(full)) {
    benchmark::RegisterBenchmark(("attention/fused/" + c.name()).c_str(), fused, c)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    if (!c.fused_only && (full || reference_in_quick_grid(c)))
      benchmark::RegisterBenchmark(("attention/reference/" + c.name()).c_str(), reference, c)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

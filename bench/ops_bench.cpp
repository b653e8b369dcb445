// Foundation speed targets, each timed in the same run as its baseline:
//   matmul                1024x1024 float veil::matmul vs Eigen's GEMM called directly on the same
//                         data: GFLOP/s;
//   autograd bookkeeping  a 10,000-op chain on 1-element tensors, forward + backward: ns per op
//                         (the same chain under NoGradGuard is the cost of the arithmetic alone);
//   elementwise add       two 16M-float tensors vs std::memcpy of the same size: bytes/s;
//   softmax, layer_norm,  forward + backward of the row-wise ops a transformer runs, as bytes/s of
//   cross_entropy         their unavoidable traffic (each input read, each output written once per
//                         pass), to compare with the memcpy bandwidth: softmax over [4096, 4096],
//                         layer_norm over [8192, 768], cross_entropy over [1024, 50257] (GPT-2's
//                         vocabulary).
// Results are checked once, outside the timed loop. The closing "ratios" block divides each
// target by its baseline (medians when run with --benchmark_repetitions).
//
//   build/bench/ops_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <veil/veil.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include "median_reporter.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <string>

namespace {

using veil::Index;
using veil::Tensor;

// ---- matmul vs Eigen GEMM ------------------------------------------------------------------------

constexpr Index gemm_size = 1024;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMajorMap = Eigen::Map<const RowMajor>;

struct GemmOperands {
  Tensor<float> a, b;
  GemmOperands() {
    veil::Generator gen(7);
    a = veil::randn<float>({gemm_size, gemm_size}, gen);
    b = veil::randn<float>({gemm_size, gemm_size}, gen);
  }
  ConstRowMajorMap map_a() const { return ConstRowMajorMap(a.data(), gemm_size, gemm_size); }
  ConstRowMajorMap map_b() const { return ConstRowMajorMap(b.data(), gemm_size, gemm_size); }
};

void report_gflops(benchmark::State& state) {
  const double flops = 2.0 * gemm_size * gemm_size * gemm_size;
  state.counters["flops"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Matmul1024(benchmark::State& state) {
  const GemmOperands operands;
  Tensor<float> c;
  for (auto _ : state) {
    c = veil::matmul(operands.a, operands.b);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const RowMajor expected = operands.map_a() * operands.map_b();
  const float error = (ConstRowMajorMap(c.data(), gemm_size, gemm_size) - expected).cwiseAbs().maxCoeff();
  if (!(error <= 1e-3f * expected.cwiseAbs().maxCoeff())) state.SkipWithError("matmul: differs from Eigen");
  report_gflops(state);
}
BENCHMARK(BM_Matmul1024)->Unit(benchmark::kMillisecond)->UseRealTime();

/// The baseline: Eigen's GEMM on the same row-major buffers, into a preallocated result.
void BM_EigenGemm1024(benchmark::State& state) {
  const GemmOperands operands;
  RowMajor c(gemm_size, gemm_size);
  for (auto _ : state) {
    c.noalias() = operands.map_a() * operands.map_b();
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  if (!c.allFinite()) state.SkipWithError("Eigen GEMM: non-finite result");
  report_gflops(state);
}
BENCHMARK(BM_EigenGemm1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- autograd bookkeeping -------------------------------------------------------------------------

constexpr Index chain_ops = 10'000;

/// x <- x * c + d, chain_ops / 2 times: chain_ops recorded ops on 1-element tensors.
Tensor<float> run_chain(const Tensor<float>& x0, const Tensor<float>& c, const Tensor<float>& d) {
  Tensor<float> x = x0;
  for (Index i = 0; i < chain_ops / 2; ++i) x = x * c + d;
  return x;
}

void report_per_op(benchmark::State& state) {
  // Inverted iteration-invariant rate: seconds per op, printed with an SI prefix ("250n" = 250 ns).
  state.counters["time_per_op"] =
      benchmark::Counter(static_cast<double>(chain_ops), benchmark::Counter::kIsIterationInvariantRate |
                                                             benchmark::Counter::kInvert);
}

void BM_AutogradChain(benchmark::State& state) {
  const auto c = veil::full<float>({1}, 0.999f);
  const auto d = veil::full<float>({1}, 0.001f);
  float grad = 0;
  for (auto _ : state) {
    auto x0 = veil::full<float>({1}, 2.0f);
    x0.set_requires_grad(true);
    Tensor<float> x = run_chain(x0, c, d);
    x.backward();
    grad = x0.grad().item();
    benchmark::DoNotOptimize(grad);
  }
  // dx/dx0 = c^(ops/2); float rounding over 5,000 multiplications stays well inside 1e-3 relative.
  const double expected = std::pow(0.999, static_cast<double>(chain_ops / 2));
  if (std::abs(grad - expected) > 1e-3 * expected) state.SkipWithError("autograd chain: wrong gradient");
  report_per_op(state);
}
BENCHMARK(BM_AutogradChain)->Unit(benchmark::kMillisecond);

void BM_ChainNoGrad(benchmark::State& state) {
  const auto c = veil::full<float>({1}, 0.999f);
  const auto d = veil::full<float>({1}, 0.001f);
  float value = 0;
  for (auto _ : state) {
    veil::NoGradGuard no_grad;
    value = run_chain(veil::full<float>({1}, 2.0f), c, d).item();
    benchmark::DoNotOptimize(value);
  }
  // The fixed point of x * c + d is 1: after 5,000 steps x = 1 + (2 - 1) * c^5000.
  const double expected = 1.0 + std::pow(0.999, static_cast<double>(chain_ops / 2));
  if (std::abs(value - expected) > 1e-3) state.SkipWithError("no-grad chain: wrong value");
  report_per_op(state);
}
BENCHMARK(BM_ChainNoGrad)->Unit(benchmark::kMillisecond);

// ---- elementwise add vs memcpy --------------------------------------------------------------------

constexpr Index stream_elements = Index{1} << 24;  // 16M floats = 64 MB per tensor
constexpr double stream_bytes = static_cast<double>(stream_elements) * sizeof(float);

void BM_Add16M(benchmark::State& state) {
  veil::Generator gen(0);
  const auto a = veil::rand<float>({stream_elements}, gen);
  const auto b = veil::rand<float>({stream_elements}, gen);
  Tensor<float> out;
  for (auto _ : state) {
    out = a + b;  // a fresh 64 MB output each time, as any out-of-place op allocates one
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const float* pa = a.data();
  const float* pb = b.data();
  const float* po = out.data();
  for (Index i = 0; i < stream_elements; i += 4099)
    if (po[i] != pa[i] + pb[i]) state.SkipWithError("add: wrong sum");
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 3 * static_cast<std::int64_t>(stream_bytes));
}
BENCHMARK(BM_Add16M)->Unit(benchmark::kMillisecond)->UseRealTime();

/// 64-byte-aligned buffer, like veil's Storage.
struct AlignedBuffer {
  explicit AlignedBuffer(std::size_t bytes) : data(static_cast<char*>(std::aligned_alloc(64, bytes))) {}
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  char* data;
};

void check_copy(benchmark::State& state, const char* src, const char* dst) {
  if (std::memcmp(src, dst, static_cast<std::size_t>(stream_bytes)) != 0) state.SkipWithError("memcpy: copy differs");
}

/// The baseline: one thread copying 64 MB into a buffer whose pages are already mapped.
void BM_Memcpy16M(benchmark::State& state) {
  AlignedBuffer src(static_cast<std::size_t>(stream_bytes)), dst(static_cast<std::size_t>(stream_bytes));
  std::memset(src.data, 1, static_cast<std::size_t>(stream_bytes));
  std::memset(dst.data, 0, static_cast<std::size_t>(stream_bytes));
  for (auto _ : state) {
    std::memcpy(dst.data, src.data, static_cast<std::size_t>(stream_bytes));
    benchmark::DoNotOptimize(dst.data);
    benchmark::ClobberMemory();
  }
  check_copy(state, src.data, dst.data);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * static_cast<std::int64_t>(stream_bytes));
}
BENCHMARK(BM_Memcpy16M)->Unit(benchmark::kMillisecond)->UseRealTime();

/// Diagnostic: the same memcpy into a freshly allocated destination each time, so the cost of
/// faulting in 64 MB of new pages (what an out-of-place op pays) shows up next to the baseline.
void BM_Memcpy16MFreshOutput(benchmark::State& state) {
  AlignedBuffer src(static_cast<std::size_t>(stream_bytes));
  std::memset(src.data, 1, static_cast<std::size_t>(stream_bytes));
  std::unique_ptr<AlignedBuffer> dst;
  for (auto _ : state) {
    dst.reset();
    dst = std::make_unique<AlignedBuffer>(static_cast<std::size_t>(stream_bytes));
    std::memcpy(dst->data, src.data, static_cast<std::size_t>(stream_bytes));
    benchmark::DoNotOptimize(dst->data);
    benchmark::ClobberMemory();
  }
  check_copy(state, src.data, dst->data);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * static_cast<std::int64_t>(stream_bytes));
}
BENCHMARK(BM_Memcpy16MFreshOutput)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- row-wise ops: softmax, layer_norm, cross_entropy ----------------------------------------------

/// Largest |veil - float64| over `rows` sampled rows of a row-wise op, against `reference`, which
/// computes one row in double.
template <class Reference>
double sampled_row_error(const Tensor<float>& x, const Tensor<float>& y, Index cols, Reference reference) {
  double worst = 0;
  const Index rows = x.numel() / cols;
  for (Index r = 0; r < rows; r += rows / 7 + 1) {
    const std::vector<double> row(x.data() + r * cols, x.data() + (r + 1) * cols);
    const std::vector<double> expected = reference(row);
    for (Index c = 0; c < cols; ++c) worst = std::max(worst, std::abs(expected[c] - y.data()[r * cols + c]));
  }
  return worst;
}

void set_traffic(benchmark::State& state, double floats_moved) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * floats_moved * sizeof(float)));
}

void BM_Softmax(benchmark::State& state) {
  constexpr Index rows = 4096, cols = 4096;
  veil::Generator gen(3);
  const auto x = veil::randn<float>({rows, cols}, gen).set_requires_grad();
  const auto grad_y = veil::randn<float>({rows, cols}, gen);
  const Tensor<float> y0 = veil::softmax(x, 1);
  const double error = sampled_row_error(x, y0, cols, [](const std::vector<double>& row) {
    const double top = *std::max_element(row.begin(), row.end());
    std::vector<double> e(row.size());
    double sum = 0;
    for (std::size_t c = 0; c < row.size(); ++c) sum += e[c] = std::exp(row[c] - top);
    for (double& v : e) v /= sum;
    return e;
  });
  if (!(error < 1e-6)) state.SkipWithError("softmax: differs from the float64 result");
  for (auto _ : state) {
    Tensor<float> y = veil::softmax(x, 1);
    y.backward(grad_y);
    benchmark::DoNotOptimize(x.grad().data());
    x.zero_grad();
  }
  set_traffic(state, 5.0 * rows * cols);  // forward reads x, writes y; backward reads y, dy, writes dx
}
BENCHMARK(BM_Softmax)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_LayerNorm(benchmark::State& state) {
  constexpr Index rows = 8192, cols = 768;
  veil::Generator gen(4);
  const auto x = veil::randn<float>({rows, cols}, gen).set_requires_grad();
  const auto weight = veil::randn<float>({cols}, gen).set_requires_grad();
  const auto bias = veil::randn<float>({cols}, gen).set_requires_grad();
  const auto grad_y = veil::randn<float>({rows, cols}, gen);
  const Tensor<float> y0 = veil::layer_norm(x, {cols}, weight, bias);
  const double error = sampled_row_error(x, y0, cols, [&](const std::vector<double>& row) {
    double mean = 0, variance = 0;
    for (double v : row) mean += v;
    mean /= cols;
    for (double v : row) variance += (v - mean) * (v - mean);
    const double rstd = 1.0 / std::sqrt(variance / cols + 1e-5);
    std::vector<double> out(row.size());
    for (Index c = 0; c < cols; ++c) out[c] = (row[c] - mean) * rstd * weight.data()[c] + bias.data()[c];
    return out;
  });
  if (!(error < 1e-4)) state.SkipWithError("layer_norm: differs from the float64 result");
  for (auto _ : state) {
    Tensor<float> y = veil::layer_norm(x, {cols}, weight, bias);
    y.backward(grad_y);
    benchmark::DoNotOptimize(x.grad().data());
    x.zero_grad(), weight.zero_grad(), bias.zero_grad();
  }
  set_traffic(state, 5.0 * rows * cols);  // forward reads x, writes y; backward reads x, dy, writes dx
}
BENCHMARK(BM_LayerNorm)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CrossEntropy50257(benchmark::State& state) {
  constexpr Index rows = 1024, vocab = 50257;
  veil::Generator gen(5);
  const auto logits = veil::randn<float>({rows, vocab}, gen).set_requires_grad();
  const auto targets = veil::randint<std::int64_t>({rows}, gen, 0, vocab);
  double expected = 0;  // mean over rows of logsumexp(row) - row[target], in double
  for (Index r = 0; r < rows; ++r) {
    const float* row = logits.data() + r * vocab;
    const double top = *std::max_element(row, row + vocab);
    double sum = 0;
    for (Index c = 0; c < vocab; ++c) sum += std::exp(row[c] - top);
    expected += top + std::log(sum) - row[targets.data()[r]];
  }
  expected /= rows;
  const double loss0 = veil::cross_entropy(logits, targets).item();
  if (!(std::abs(loss0 - expected) < 1e-5 * expected)) state.SkipWithError("cross_entropy: differs from the float64 loss");
  for (auto _ : state) {
    Tensor<float> loss = veil::cross_entropy(logits, targets);
    loss.backward();
    benchmark::DoNotOptimize(logits.grad().data());
    logits.zero_grad();
  }
  set_traffic(state, 3.0 * rows * vocab);  // forward reads the logits; backward reads them and writes dlogits
}
BENCHMARK(BM_CrossEntropy50257)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- ratios ---------------------------------------------------------------------------------------

/// Each target divided by its baseline.
class RatioReporter : public MedianReporter {
 protected:
  void write_ratios(std::ostream& out) override {
    if (has("BM_Matmul1024") && has("BM_EigenGemm1024")) {
      const double veil_rate = summary("BM_Matmul1024").counters["flops"];
      const double eigen_rate = summary("BM_EigenGemm1024").counters["flops"];
      out << "  matmul 1024^3     " << veil_rate / 1e9 << " GFLOP/s vs Eigen GEMM " << eigen_rate / 1e9
          << " GFLOP/s: ratio " << veil_rate / eigen_rate << '\n';
    }
    if (has("BM_Add16M") && has("BM_Memcpy16M")) {
      const double add = summary("BM_Add16M").counters["bytes_per_second"];
      const double copy = summary("BM_Memcpy16M").counters["bytes_per_second"];
      out << "  add 16M floats    " << add / 1e9 << " GB/s vs memcpy " << copy / 1e9
          << " GB/s: bandwidth ratio " << add / copy << " (target >= 0.60)\n";
      if (has("BM_Memcpy16MFreshOutput")) {
        const double fresh = summary("BM_Memcpy16MFreshOutput").counters["bytes_per_second"];
        out << "  memcpy into a fresh 64 MB buffer: " << fresh / 1e9 << " GB/s, ratio " << fresh / copy
            << " to memcpy into mapped pages\n";
      }
    }
    if (has("BM_Memcpy16M"))
      for (const char* name : {"BM_Softmax", "BM_LayerNorm", "BM_CrossEntropy50257"})
        if (has(name))
          out << "  " << name + 3 << " fwd+bwd: " << summary(name).counters["bytes_per_second"] / 1e9
              << " GB/s of traffic, ratio " << summary(name).counters["bytes_per_second"] / summary("BM_Memcpy16M").counters["bytes_per_second"]
              << " to memcpy\n";
    if (has("BM_AutogradChain")) {
      const double per_op = summary("BM_AutogradChain").counters["time_per_op"];
      out << "  autograd chain    " << per_op * 1e9 << " ns per op (forward + backward)";
      if (has("BM_ChainNoGrad")) {
        const double plain = summary("BM_ChainNoGrad").counters["time_per_op"];
        out << " vs " << plain * 1e9 << " ns per op without recording: ratio " << per_op / plain;
      }
      out << '\n';
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

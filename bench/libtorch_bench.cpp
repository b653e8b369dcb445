// The attention grid of attention_cases.hpp in libtorch (PyTorch's C++ library, 1.13), fp32 on
// CPU, so the report can join each case with veil's attention_bench by name. Benchmarks:
//   sgemm/libtorch/1024             torch::mm at 1024³: the BLAS rate libtorch gets under these settings
//   attention/libtorch/<case>       what PyTorch users write on CPU: scores = q @ kᵀ · scale,
//                                   masked_fill_(~keep, -inf), softmax, @ v; forward under
//                                   NoGradGuard, or forward then out.backward(grad_out)
//   attention/libtorch_sdpa/<case>  at::_scaled_dot_product_attention, 1.13's private SDPA (is_causal
//                                   for plain causal with Lq = Lk, the bool mask otherwise). 1.13 has
//                                   no fused CPU kernel: with or without autograd it runs
//                                   _scaled_dot_product_attention_math, a leaner composite (q and k
//                                   scaled before the product, the bool mask turned into an additive
//                                   one and added in place)
//   attention_memory/libtorch/fwd_bwd/causal/B1xH4/L8192/D64
//                                   one materialised causal forward+backward, for its peak_RSS_MB;
//                                   run it alone (--benchmark_filter=attention_memory) so the peak
//                                   is not inflated by what earlier cases left in the heap
//   mha/libtorch/fwd_bwd/causal/B8xL512xE512xH8
//                                   torch::nn::MultiheadAttention(512, 8), causal, forward+backward:
//                                   the shape nn_bench times for veil's module
// Counters as in attention_bench: dense_GFLOPs, effective_GFLOPs (kept pairs only), peak_RSS_MB
// (this case alone), plus baseline_RSS_MB (the process before the case's inputs exist: libtorch
// alone holds a few hundred MB more than veil's programs). Cases whose materialised score tensors
// would not fit the memory budget are skipped with the reason. Before a case is timed, its output
// is checked once against veil's reference_attention on a small instance (B = 2, H = 2, L = 256,
// same mask kind); rows with no kept key are left out of that check: libtorch's softmax makes them
// NaN (veil gives 0), which the label of those cases says.
//
// PyTorch's best settings on an AVX-512 CPU with 2 cores, to run the program with:
//   OPENBLAS_CORETYPE=SkylakeX     libtorch's matmuls go to the system OpenBLAS; a core type forced
//                                  to an AVX2 one (Haswell) halves its SGEMM rate
//   OPENBLAS_NUM_THREADS=1 or 2    OpenBLAS has its own thread pool next to ATen's OpenMP one, and
//                                  which of the two is better depends on the load: run both, keep
//                                  the faster
//   OMP_NUM_THREADS=2              ATen's intra-op threads (set to 2 here when it is unset: libtorch's
//                                  own default counts cores as cpuinfo sees them, 1 on some VMs)
//   ATEN_CPU_CAPABILITY=avx512     1.13 keeps its AVX-512 kernels (softmax, elementwise) opt-in
//   GLIBC_TUNABLES=glibc.malloc.hugetlb=1
//                                  every score-sized tensor is a fresh mmap; with 4 KiB pages its
//                                  first-touch faults cost as much as the softmax over it, and
//                                  transparent huge pages cut that several times
// e.g. (then again with OPENBLAS_NUM_THREADS=2)
//   export OPENBLAS_CORETYPE=SkylakeX OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx512 GLIBC_TUNABLES=glibc.malloc.hugetlb=1
//   OPENBLAS_NUM_THREADS=1 build/bench/libtorch_bench [--grid=quick|full] [Google Benchmark flags]
// The settings in effect are written to the JSON context. OPENBLAS_L2_SIZE, where the environment
// sets it, is not read by OpenBLAS 0.3.21 and makes no difference.
#include <benchmark/benchmark.h>

#include <torch/torch.h>

#include <veil/veil.hpp>

#include "attention_cases.hpp"
#include "peak_memory.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace {

using bench::AttentionCase;
using bench::MaskKind;
using veil::Index;

/// The composite keeps about four score-sized tensors alive in forward+backward (scores,
/// probabilities and their gradients), two in forward alone.
constexpr double kMemoryBudget = 6.0 * (1ull << 30);

torch::Tensor to_torch(const veil::Tensor<float>& t) {
  const veil::Tensor<float> dense = t.contiguous();
  const std::vector<std::int64_t> sizes(dense.shape().begin(), dense.shape().end());
  return torch::from_blob(dense.data(), sizes, torch::kFloat32).clone();
}

torch::Tensor to_torch(const veil::Tensor<bool>& t) {
  const veil::Tensor<bool> dense = t.contiguous();
  const std::vector<std::int64_t> sizes(dense.shape().begin(), dense.shape().end());
  return torch::from_blob(dense.data(), sizes, torch::kBool).clone();
}

/// The case's inputs: the same values attention_bench draws for veil (same generator, same order).
struct Inputs {
  veil::Tensor<float> veil_q, veil_k, veil_v;
  torch::Tensor q, k, v, grad_output;
  torch::Tensor keep;  // [B, 1, Lq, Lk] bool, broadcast over heads; undefined for mask kind none
  bool causal = false;  // plain causal with Lq = Lk: top-left and bottom-right alignment agree
};

Inputs make_inputs(const AttentionCase& c) {
  veil::Generator generator(1);
  const veil::Shape query_shape{c.batch, c.heads, c.query_length, c.head_dim};
  const veil::Shape key_shape{c.batch, c.heads, c.key_length, c.head_dim};
  Inputs in;
  in.veil_q = veil::randn<float>(query_shape, generator);
  in.veil_k = veil::randn<float>(key_shape, generator);
  in.veil_v = veil::randn<float>(key_shape, generator);
  in.q = to_torch(in.veil_q), in.k = to_torch(in.veil_k), in.v = to_torch(in.veil_v);
  in.grad_output = to_torch(veil::randn<float>(query_shape, generator));
  if (c.backward) in.q.set_requires_grad(true), in.k.set_requires_grad(true), in.v.set_requires_grad(true);
  if (c.mask != MaskKind::none)
    in.keep = to_torch(veil::mask::materialize(bench::make_mask(c), c.batch, 1, c.query_length, c.key_length));
  in.causal = c.mask == MaskKind::causal && c.query_length == c.key_length;
  return in;
}

/// One forward pass of an implementation; `masked_out` is ~keep, computed once per case like a
/// mask a model holds.
using Attention = std::function<torch::Tensor(const Inputs& in, const torch::Tensor& masked_out)>;

torch::Tensor composite(const Inputs& in, const torch::Tensor& masked_out) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(in.q.size(-1)));
  torch::Tensor scores = torch::matmul(in.q, in.k.transpose(-2, -1)) * scale;
  if (masked_out.defined()) scores.masked_fill_(masked_out, -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(scores, -1), in.v);
}

torch::Tensor sdpa(const Inputs& in, const torch::Tensor&) {
  c10::optional<torch::Tensor> mask;
  if (in.keep.defined() && !in.causal) mask = in.keep;
  return std::get<0>(at::_scaled_dot_product_attention(in.q, in.k, in.v, mask, /*dropout_p=*/0.0,
                                                       /*need_attn_weights=*/false, /*is_causal=*/in.causal));
}

torch::Tensor run_once(const AttentionCase& c, const Inputs& in, const torch::Tensor& masked_out,
                       const Attention& attention) {
  if (c.backward) return attention(in, masked_out);
  torch::NoGradGuard no_grad;
  return attention(in, masked_out);
}

/// libtorch's output against veil's reference on a small instance of the case (B = 2, H = 2,
/// L = 256, or Lq = 1 against Lk = 256), on the rows that keep at least one key; exits on a
/// mismatch. Once per implementation and small case.
void check_against_reference(const std::string& implementation, const AttentionCase& c, const Attention& attention) {
  static std::set<std::string> checked;
  AttentionCase small = c;
  small.batch = 2, small.heads = 2;
  small.key_length = 256, small.query_length = c.query_length == c.key_length ? 256 : 1;
  if (!checked.insert(implementation + "/" + small.name()).second) return;
  const Inputs in = make_inputs(small);
  const torch::Tensor masked_out = in.keep.defined() ? in.keep.logical_not() : torch::Tensor();
  const torch::Tensor output = run_once(small, in, masked_out, attention).detach().contiguous();
  const veil::mask::Mask mask = bench::make_mask(small);
  const veil::Tensor<float> expected =
      veil::attention::reference_attention(in.veil_q, in.veil_k, in.veil_v, mask).output.contiguous();
  const veil::Tensor<bool> keep = veil::mask::materialize(mask, small.batch, 1, small.query_length, small.key_length);

  const Index heads = small.heads, Lq = small.query_length, Lk = small.key_length, D = small.head_dim;
  const float* got = output.data_ptr<float>();
  double worst = 0;
  for (Index b = 0; b < small.batch; ++b)
    for (Index i = 0; i < Lq; ++i) {
      const bool* row = keep.data() + (b * Lq + i) * Lk;
      if (std::find(row, row + Lk, true) == row + Lk) continue;
      for (Index h = 0; h < heads; ++h)
        for (Index d = 0; d < D; ++d) {
          const Index e = ((b * heads + h) * Lq + i) * D + d;
          const double error = std::abs(static_cast<double>(got[e]) - static_cast<double>(expected.data()[e]));
          if (std::isnan(error) || error > worst) worst = error;  // a NaN stays
        }
    }
  if (!(worst < 1e-4)) {
    std::fprintf(stderr, "libtorch_bench: %s differs from veil's reference_attention by %g on %s\n",
                 implementation.c_str(), worst, small.name().c_str());
    std::exit(1);
  }
}

void set_counters(benchmark::State& state, const AttentionCase& c, double kept) {
  const double gflop = c.dense_flops() * 1e-9;
  state.counters["dense_GFLOPs"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["effective_GFLOPs"] =
      benchmark::Counter(gflop * kept, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_RSS_MB"] = bench::peak_resident_bytes() / (1 << 20);
}

void run_case(benchmark::State& state, const AttentionCase& c, const std::string& implementation,
              const Attention& attention) {
  if (const std::string reason = c.skip_reason(c.backward ? 4 : 2, kMemoryBudget); !reason.empty()) {
    state.SkipWithError(reason.c_str());
    return;
  }
  check_against_reference(implementation, c, attention);
  const double kept = bench::kept_fraction(c);
  bench::reset_peak_resident_memory();
  // What the process held before the case (libtorch's code alone is a few hundred MB), to
  // compare peaks with veil's programs net of it.
  state.counters["baseline_RSS_MB"] = bench::peak_resident_bytes() / (1 << 20);
  {
    const Inputs in = make_inputs(c);
    const torch::Tensor masked_out = in.keep.defined() ? in.keep.logical_not() : torch::Tensor();
    for (auto _ : state) {
      const torch::Tensor out = run_once(c, in, masked_out, attention);
      if (c.backward) {
        out.backward(in.grad_output);
        benchmark::DoNotOptimize(in.q.grad().data_ptr());
        // set_to_none, as PyTorch's optimisers do by default since 2.0
        in.q.mutable_grad().reset(), in.k.mutable_grad().reset(), in.v.mutable_grad().reset();
      } else {
        benchmark::DoNotOptimize(out.data_ptr());
      }
    }
  }
  set_counters(state, c, kept);
  if (c.mask == MaskKind::fully_masked_rows) state.SetLabel("fully masked rows are NaN (PyTorch's softmax)");
}

void sgemm(benchmark::State& state) {
  const torch::Tensor a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  torch::Tensor c = torch::empty({1024, 1024});
  for (auto _ : state) {
    torch::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * 1024 * 1024 * 1024 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

constexpr Index kMhaBatch = 8, kMhaLength = 512, kMhaEmbed = 512, kMhaHeads = 8;

/// The same FLOP count as nn_bench's: 4 projections (2·B·L·E² each, backward twice that) and
/// causal attention (14·B·H·L²·D forward+backward, half the pairs kept).
double mha_flops() {
  const double projections = 4 * 3 * 2.0 * kMhaBatch * kMhaLength * kMhaEmbed * kMhaEmbed;
  const double attention = 14.0 * kMhaBatch * kMhaHeads * kMhaLength * kMhaLength * (kMhaEmbed / kMhaHeads) * 0.5;
  return projections + attention;
}

/// torch::nn::MultiheadAttention forward+backward on x [B, L, E]. 1.13's C++ module has no
/// batch_first, so x goes in as a [L, B, E] view, and it only adds attn_mask, so the causal mask
/// is the additive -inf form (a bool mask would be added as 0/1).
void mha(benchmark::State& state) {
  torch::manual_seed(1);
  torch::nn::MultiheadAttention module(kMhaEmbed, kMhaHeads);
  const torch::Tensor x = torch::randn({kMhaBatch, kMhaLength, kMhaEmbed}).requires_grad_(true);
  const torch::Tensor grad_out = torch::randn({kMhaBatch, kMhaLength, kMhaEmbed});
  const torch::Tensor causal =
      torch::full({kMhaLength, kMhaLength}, -std::numeric_limits<float>::infinity()).triu(1);
  auto forward = [&] {
    const torch::Tensor rows = x.transpose(0, 1);
    return std::get<0>(module->forward(rows, rows, rows, {}, /*need_weights=*/false, causal)).transpose(0, 1);
  };
  if (!torch::isfinite(forward()).all().item<bool>()) {
    std::fprintf(stderr, "libtorch_bench: MultiheadAttention's output is not finite\n");
    std::exit(1);
  }
  bench::reset_peak_resident_memory();
  for (auto _ : state) {
    module->zero_grad(/*set_to_none=*/true);
    x.mutable_grad().reset();
    forward().backward(grad_out);
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.counters["GFLOPs"] = benchmark::Counter(mha_flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_RSS_MB"] = bench::peak_resident_bytes() / (1 << 20);
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "unset";
}

}  // namespace

int main(int argc, char** argv) {
  const bool full = bench::take_grid_flag(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  if (!std::getenv("OMP_NUM_THREADS")) at::set_num_threads(2);
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  for (const char* name :
       {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES"})
    benchmark::AddCustomContext(name, environment(name));
  benchmark::AddCustomContext("grid", full ? "full" : "quick");

  benchmark::RegisterBenchmark("sgemm/libtorch/1024", sgemm)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (const AttentionCase& c : bench::attention_cases(full)) {
    if (c.fused_only) continue;
    benchmark::RegisterBenchmark(("attention/libtorch/" + c.name()).c_str(),
                                 [c](benchmark::State& state) { run_case(state, c, "libtorch", composite); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("attention/libtorch_sdpa/" + c.name()).c_str(),
                                 [c](benchmark::State& state) { run_case(state, c, "libtorch_sdpa", sdpa); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  const AttentionCase memory_case{MaskKind::causal, 1, 4, 8192, 8192, 64, true};
  benchmark::RegisterBenchmark(("attention_memory/libtorch/" + memory_case.name()).c_str(),
                               [memory_case](benchmark::State& state) {
                                 run_case(state, memory_case, "libtorch", composite);
                               })
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("mha/libtorch/fwd_bwd/causal/B8xL512xE512xH8", mha)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// Determinism: the fused forward and backward are bit-identical run to run at a fixed thread
// count, and agree across thread counts within rounding (the backward's dQ partitioning depends on
// the number of threads, so 1 vs 2 threads may differ in the last bits).
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;

namespace {

/// Restores the thread count when the test ends.
struct ThreadCount {
  int saved = static_cast<int>(veil::num_threads());
  explicit ThreadCount(int count) { veil::set_num_threads(count); }
  ~ThreadCount() { veil::set_num_threads(saved); }
};

struct Problem {
  Tensor<float> q, k, v, bias, grad_out;
  mask::Mask mask;
};

Problem problem() {
  // GQA, tiles straddled (Lq = 130 > 2 query tiles, Lk = 260 > 2 key tiles), a mask mixing an
  // interval part and a dense additive bias (empty, full and partial tiles).
  veil::Generator gen(42);
  const Index B = 2, H = 4, Hkv = 2, Lq = 130, Lk = 260, D = 16;
  Problem p{veil::randn<float>({B, H, Lq, D}, gen), veil::randn<float>({B, Hkv, Lk, D}, gen),
            veil::randn<float>({B, Hkv, Lk, D}, gen), veil::randn<float>({Lq, Lk}, gen),
            veil::randn<float>({B, H, Lq, D}, gen), mask::none()};
  p.mask = mask::key_padding({260, 190}) & mask::causal() & mask::additive(p.bias);
  return p;
}

std::vector<float> forward(const Problem& p) {
  return veil::scaled_dot_product_attention(p.q, p.k, p.v, p.mask).to_vector();
}

std::vector<float> backward(const Problem& p) {
  auto q = p.q.detach().set_requires_grad(true), k = p.k.detach().set_requires_grad(true);
  auto v = p.v.detach().set_requires_grad(true);
  auto bias = p.bias.detach().set_requires_grad(true);
  const auto m = mask::key_padding({260, 190}) & mask::causal() & mask::additive(bias);
  veil::scaled_dot_product_attention(q, k, v, m).backward(p.grad_out);
  std::vector<float> all;
  for (const auto& g : {q.grad(), k.grad(), v.grad(), bias.grad()}) {
    const auto values = g.to_vector();
    all.insert(all.end(), values.begin(), values.end());
  }
  return all;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t e = 0; e < a.size(); ++e) worst = std::max(worst, std::abs(static_cast<double>(a[e]) - b[e]));
  return worst;
}

}  // namespace

TEST_CASE("The fused forward is bit-identical across 100 runs with 2 threads", "[attention][determinism]") {
  const ThreadCount threads(2);
  const Problem p = problem();
  const auto first = forward(p);
  int identical = 0;
  for (int run = 1; run < 100; ++run) identical += bit_identical(forward(p), first) ? 1 : 0;
  CHECK(identical == 99);
}

TEST_CASE("The fused backward is bit-identical across 20 runs with 2 threads", "[attention][determinism]") {
  const ThreadCount threads(2);
  const Problem p = problem();
  const auto first = backward(p);
  int identical = 0;
  for (int run = 1; run < 20; ++run) identical += bit_identical(backward(p), first) ? 1 : 0;
  CHECK(identical == 19);
}

TEST_CASE("1 and 2 threads agree within 1e-6 in forward and backward", "[attention][determinism][threads]") {
  const Problem p = problem();
  std::vector<float> out1, out2, grads1, grads2;
  {
    const ThreadCount threads(1);
    out1 = forward(p);
    grads1 = backward(p);
  }
  {
    const ThreadCount threads(2);
    out2 = forward(p);
    grads2 = backward(p);
  }
  const double forward_diff = max_abs_diff(out1, out2), backward_diff = max_abs_diff(grads1, grads2);
  WARN("1 vs 2 threads: forward max diff " << forward_diff << ", backward max diff " << backward_diff);
  CHECK(forward_diff <= 1e-6);
  CHECK(backward_diff <= 1e-6);
}

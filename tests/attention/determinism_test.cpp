// Determinism: the fused forward and backward are bit-identical run to run at a fixed thread
// count, and agree across thread counts within rounding (the backward's dQ partitioning depends on
// the number of threads, so 1 vs 2 threads may differ in the last bits).
//
// Two problems cover both ways the backward reduces dQ: with 2 threads, "grouped" has
// B·Hkv = 4 (batch, kv head) pairs, enough work items for each to own its query heads' dQ;
// "partitioned" has a single pair, so its key tiles are split into partitions with private dQ
// buffers summed in a fixed order afterwards.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include "support/threads.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
using veil_test::ThreadCountScope;
namespace mask = veil::mask;

namespace {

struct Problem {
  std::string name;
  Tensor<float> q, k, v, bias, grad_out;
  std::vector<Index> key_lengths;
};

/// Both problems straddle tiles (Lq = 100: a full query tile of 64 and a partial one; Lk = 200: a
/// full key tile of 128 and a partial one) under a mask mixing interval parts (padding, causal)
/// with a dense additive bias, so empty, full and partial tiles all occur. The sizes keep the 300
/// forward and backward runs of each problem within seconds even in a sanitizer Debug build.
Problem problem(const std::string& name) {
  veil::Generator gen(42);
  const bool grouped = name == "grouped";
  const Index B = grouped ? 2 : 1, H = grouped ? 4 : 2, Hkv = grouped ? 2 : 1, Lq = 100, Lk = 200, D = 16;
  return {name,
          veil::randn<float>({B, H, Lq, D}, gen),
          veil::randn<float>({B, Hkv, Lk, D}, gen),
          veil::randn<float>({B, Hkv, Lk, D}, gen),
          veil::randn<float>({Lq, Lk}, gen),
          veil::randn<float>({B, H, Lq, D}, gen),
          grouped ? std::vector<Index>{200, 150} : std::vector<Index>{198}};
}

mask::Mask mask_of(const Problem& p, const Tensor<float>& bias) {
  return mask::key_padding(p.key_lengths) & mask::causal() & mask::additive(bias);
}

std::vector<float> forward(const Problem& p) {
  return veil::scaled_dot_product_attention(p.q, p.k, p.v, mask_of(p, p.bias)).to_vector();
}

std::vector<float> backward(const Problem& p) {
  auto q = p.q.detach().set_requires_grad(true), k = p.k.detach().set_requires_grad(true);
  auto v = p.v.detach().set_requires_grad(true);
  auto bias = p.bias.detach().set_requires_grad(true);
  veil::scaled_dot_product_attention(q, k, v, mask_of(p, bias)).backward(p.grad_out);
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

TEST_CASE("The fused forward is bit-identical across 250 runs with 2 threads", "[attention][determinism]") {
  const ThreadCountScope threads(2);
  for (const std::string name : {"grouped", "partitioned"}) {
    const Problem p = problem(name);
    const auto first = forward(p);
    int identical = 0;
    for (int run = 1; run < 250; ++run) identical += bit_identical(forward(p), first) ? 1 : 0;
    INFO(name);
    CHECK(identical == 249);
  }
}

TEST_CASE("The fused backward is bit-identical across 50 runs with 2 threads", "[attention][determinism]") {
  const ThreadCountScope threads(2);
  for (const std::string name : {"grouped", "partitioned"}) {
    const Problem p = problem(name);
    const auto first = backward(p);
    int identical = 0;
    for (int run = 1; run < 50; ++run) identical += bit_identical(backward(p), first) ? 1 : 0;
    INFO(name);
    CHECK(identical == 49);
  }
}

TEST_CASE("1 and 2 threads agree within 1e-6 in forward and backward", "[attention][determinism]") {
  for (const std::string name : {"grouped", "partitioned"}) {
    const Problem p = problem(name);
    std::vector<float> out1, out2, grads1, grads2;
    {
      const ThreadCountScope threads(1);
      out1 = forward(p);
      grads1 = backward(p);
    }
    {
      const ThreadCountScope threads(2);
      out2 = forward(p);
      grads2 = backward(p);
    }
    const double forward_diff = max_abs_diff(out1, out2), backward_diff = max_abs_diff(grads1, grads2);
    INFO(name);
    WARN(name << ": 1 vs 2 threads: forward max diff " << forward_diff << ", backward max diff " << backward_diff);
    CHECK(forward_diff <= 1e-6);
    CHECK(backward_diff <= 1e-6);
  }
}

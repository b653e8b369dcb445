// Out-of-bounds canary for the fused attention (xformers' nanify_oob_seqlen). q, k, v, the upstream
// gradient and any additive bias are views into larger buffers whose other elements are NaN or
// 1e30: after the logical end, at an odd offset, or between every row, head and batch (the kernel
// reads last-dimension-contiguous views in place). Output, logsumexp and every gradient must be
// bit-identical to the run on clean contiguous tensors. The lengths are not multiples of the
// tile sizes (64 or 32 query rows, 128 keys), so partial tiles sit at the end of every sequence.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include "support/out_of_bounds.hpp"

#include <functional>
#include <limits>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
using veil_test::Layout;
namespace mask = veil::mask;

namespace {

struct Case {
  std::string name;
  Index B, H, Hkv, Lq, Lk, D, Dv;
  bool bias;  // an additive [Lq, Lk] bias that requires grad joins the mask
  std::function<mask::Mask(const Tensor<float>& bias)> make;
  double dropout = 0.0;
};

std::vector<Case> cases() {
  const auto plain = [](mask::Mask m) { return [m](const Tensor<float>&) { return m; }; };
  return {
      {"no mask with D 72 (32-row query tiles)", 2, 2, 1, 45, 131, 72, 40, false, plain(mask::none())},
      {"causal", 2, 4, 2, 130, 130, 24, 20, false, plain(mask::causal())},
      {"causal bottom-right with Lq < Lk", 1, 4, 2, 70, 200, 16, 16, false, plain(mask::causal())},
      {"causal bottom-right with Lq > Lk (fully masked rows)", 2, 2, 2, 150, 100, 16, 8, false, plain(mask::causal())},
      {"causal top-left with Lq > Lk", 1, 2, 1, 150, 100, 16, 8, false, plain(mask::causal_top_left())},
      {"key padding", 2, 4, 2, 67, 200, 32, 24, false, plain(mask::key_padding({200, 77}))},
      {"documents and causal", 1, 4, 2, 200, 200, 16, 16, false, plain(mask::documents({50, 81, 69}) & mask::causal())},
      {"causal sliding window", 2, 2, 1, 150, 150, 16, 16, false, plain(mask::causal() & mask::sliding_window(20, 0))},
      {"additive bias and key padding", 2, 4, 2, 70, 140, 16, 12, true,
       [](const Tensor<float>& bias) { return mask::additive(bias) & mask::key_padding({140, 99}); }},
      {"causal with attention dropout", 2, 2, 1, 90, 90, 16, 16, false, plain(mask::causal()), 0.25},
  };
}

/// out, logsumexp, dq, dk, dv and d(bias) as bit patterns, for inputs q, k, v (, bias) and grad_out.
std::vector<std::vector<std::uint64_t>> run(const Case& c, const std::vector<Tensor<float>>& inputs,
                                            const Tensor<float>& grad_out) {
  std::vector<Tensor<float>> leaves;
  for (const auto& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
  veil::Generator dropout_generator(11);  // the same dropout mask in every run
  veil::attention::AttentionOptions options;
  options.dropout = c.dropout;
  options.generator = &dropout_generator;
  const auto result = veil::attention::scaled_dot_product_attention_with_logsumexp(
      leaves[0], leaves[1], leaves[2], c.make(c.bias ? leaves[3] : Tensor<float>()), options);
  result.output.backward(grad_out);
  std::vector<std::vector<std::uint64_t>> bits{veil_test::bits_of(result.output), veil_test::bits_of(result.logsumexp)};
  for (const auto& leaf : leaves) bits.push_back(veil_test::bits_of(leaf.grad()));
  return bits;
}

}  // namespace

TEST_CASE("attention on views into NaN or 1e30 padded buffers is bit-identical to clean contiguous inputs",
          "[attention][out_of_bounds]") {
  const std::vector<std::string> parts{"output", "logsumexp", "dq", "dk", "dv", "dbias"};
  for (const Case& c : cases()) {
    veil::Generator gen(2024);
    std::vector<Tensor<float>> clean{veil::randn<float>({c.B, c.H, c.Lq, c.D}, gen),
                                     veil::randn<float>({c.B, c.Hkv, c.Lk, c.D}, gen),
                                     veil::randn<float>({c.B, c.Hkv, c.Lk, c.Dv}, gen)};
    if (c.bias) clean.push_back(veil::randn<float>({c.Lq, c.Lk}, gen));
    const Tensor<float> grad_out = veil::randn<float>({c.B, c.H, c.Lq, c.Dv}, gen);
    const auto expected = run(c, clean, grad_out);
    for (const float poison : {std::numeric_limits<float>::quiet_NaN(), 1e30f}) {
      for (const Layout layout : veil_test::all_layouts()) {
        std::vector<Tensor<float>> poisoned;
        for (const auto& t : clean) poisoned.push_back(veil_test::poisoned_view(t, layout, poison));
        REQUIRE(poisoned[0].strides().back() == 1);  // read in place, not copied first
        const auto got = run(c, poisoned, veil_test::poisoned_view(grad_out, layout, poison));
        REQUIRE(got.size() == expected.size());
        for (std::size_t part = 0; part < got.size(); ++part) {
          INFO(c.name << ", " << veil_test::layout_name(layout) << " layout, poison " << poison << ": " << parts[part]);
          CHECK(got[part] == expected[part]);
        }
      }
    }
  }
}

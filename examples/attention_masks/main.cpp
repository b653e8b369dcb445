// A tour of veil's attention masks: every kind, drawn as a picture (▇ kept, · masked) and run
// through the fused scaled_dot_product_attention.
//
// Each picture shows batch row 0, head 0: query i down, key j across. Masks are typed values, so
// "what does true mean" and "which corner does causal align to" are answered by the constructor's
// name, never by a convention you have to remember. Exits 1 if any output holds a NaN
// (or PackedSequences disagrees with the documents & causal mask it stands for).
#include <veil/veil.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;

constexpr Index batch = 2, heads = 2, head_dim = 16;

/// Draws the keep pattern of (b = 0, h = 0).
void draw(const mask::Mask& m, Index query_length, Index key_length) {
  const Tensor<bool> keep = mask::materialize(m, batch, heads, query_length, key_length);
  for (Index i = 0; i < query_length; ++i) {
    std::string line = "   ";
    for (Index j = 0; j < key_length; ++j) line += keep.data()[i * key_length + j] ? " ▇" : " ·";
    std::printf("%s\n", line.c_str());
  }
}

/// Draws the mask, runs the fused attention with it, prints the output's shape and checksum.
/// Returns false if the output holds a NaN.
bool tour(const char* title, const mask::Mask& m, Index query_length, Index key_length, veil::Generator& gen) {
  std::printf("\n%s   (Lq = %lld, Lk = %lld)\n", title, static_cast<long long>(query_length),
              static_cast<long long>(key_length));
  draw(m, query_length, key_length);
  const auto q = veil::randn<float>({batch, heads, query_length, head_dim}, gen);
  const auto k = veil::randn<float>({batch, heads, key_length, head_dim}, gen);
  const auto v = veil::randn<float>({batch, heads, key_length, head_dim}, gen);
  const auto out = veil::scaled_dot_product_attention(q, k, v, m);
  double checksum = 0;
  bool has_nan = false;
  for (float x : out.to_vector()) {
    checksum += x;
    has_nan = has_nan || std::isnan(x);
  }
  std::printf("    out %s, checksum %+.6f, %s\n", veil::to_string(out.shape()).c_str(), checksum,
              has_nan ? "NaN FOUND" : "no NaN");
  return !has_nan;
}

}  // namespace

int main() {
  veil::Generator gen(2024);
  bool ok = true;

  // Causal, bottom-right aligned (flash-attention >= 2.1): with Lq < Lk the queries are the LAST
  // Lq positions of the sequence, as when decoding against a key/value cache.
  ok &= tour("causal()", mask::causal(), 8, 8, gen);
  ok &= tour("causal() with Lq != Lk: bottom-right aligned", mask::causal(), 6, 10, gen);
  // PyTorch's is_causal alignment: query i sees keys 0..i whatever Lk is.
  ok &= tour("causal_top_left() with Lq != Lk", mask::causal_top_left(), 6, 10, gen);

  // Local attention: two keys back, one ahead.
  ok &= tour("sliding_window(2, 1)", mask::sliding_window(2, 1), 8, 8, gen);
  ok &= tour("causal() & sliding_window(2, 0): causal local", mask::causal() & mask::sliding_window(2, 0), 8, 8, gen);

  // Padding: batch row 0 has 5 real keys, row 1 has 8 (the picture is row 0).
  ok &= tour("key_padding({5, 8})", mask::key_padding({5, 8}), 8, 8, gen);

  // Packed language-model training: three documents in one row, each causal on its own. The same
  // lengths give the positions and the loss mask (veil::attention::PackedSequences).
  const auto packing = veil::attention::PackedSequences::from_lengths({3, 2, 3});
  ok &= tour("documents({3, 2, 3}) & causal()", mask::documents({3, 2, 3}) & mask::causal(), 8, 8, gen);
  const bool same = mask::materialize(packing.mask(), batch, heads, 8, 8).to_vector() ==
                    mask::materialize(mask::documents({3, 2, 3}) & mask::causal(), batch, heads, 8, 8).to_vector();
  ok &= same;
  std::printf("    PackedSequences::from_lengths({3, 2, 3}).mask() is %s; position_ids:",
              same ? "the same mask" : "A DIFFERENT MASK");
  for (auto p : packing.position_ids().to_vector()) std::printf(" %lld", static_cast<long long>(p));
  std::printf("\n");

  // Dense boolean masks, with the meaning in the name: allow keeps true, forbid keeps false.
  std::vector<bool> even_keys_or_self(8 * 8);
  for (Index i = 0; i < 8; ++i)
    for (Index j = 0; j < 8; ++j) even_keys_or_self[i * 8 + j] = j % 2 == 0 || j == i;
  ok &= tour("allow([Lq, Lk]: even keys and the diagonal)", mask::allow(veil::from_vector(even_keys_or_self, {8, 8})),
             8, 8, gen);
  // [B, 1, 1, Lk] as nn.MultiheadAttention's key_padding_mask: true = padding = forbidden.
  std::vector<bool> is_padding(batch * 8, false);
  for (Index j = 6; j < 8; ++j) is_padding[j] = true;
  ok &= tour("forbid([B, 1, 1, Lk]: last two keys of row 0 are padding)",
             mask::forbid(veil::from_vector(is_padding, {batch, 1, 1, 8})), 8, 8, gen);

  // Additive: a causal ALiBi-style bias, -slope·(i - j) on kept edges and -inf above the diagonal.
  // The -inf entries cut their edges (they are not added); the rest shift the scores.
  std::vector<float> alibi(8 * 8);
  for (Index i = 0; i < 8; ++i)
    for (Index j = 0; j < 8; ++j)
      alibi[i * 8 + j] = j <= i ? -0.5f * static_cast<float>(i - j) : -std::numeric_limits<float>::infinity();
  ok &= tour("additive(causal ALiBi bias)", mask::additive(veil::from_vector(alibi, {8, 8})), 8, 8, gen);

  // Custom (FlexAttention-style predicate): a prefix-LM, bidirectional over the first 3 tokens.
  ok &= tour("custom(prefix LM, prefix of 3)",
             mask::custom([](Index, Index, Index i, Index j) { return j < 3 || j <= i; }), 8, 8, gen);

  // Composition with |: Longformer-style local window plus a global first token.
  ok &= tour("sliding_window(1, 1) | custom(global token 0)",
             mask::sliding_window(1, 1) | mask::custom([](Index, Index, Index i, Index j) { return i == 0 || j == 0; }),
             8, 8, gen);

  std::printf("\n%s\n", ok ? "every output is NaN-free" : "a NaN was found");
  return ok ? 0 : 1;
}

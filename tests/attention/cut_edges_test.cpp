// Cut edges (DESIGN.md, "Masks"): a masked edge takes no part in the forward or the backward.
// NaN, ±inf or 1e30 written into K/V rows of keys that no query keeps, or into additive-bias
// entries of edges another mask component cuts, must leave the output, the logsumexp and every
// gradient bit-identical; dK/dV of such keys and d(bias) of cut entries are exactly 0. NaN in a
// kept position is data, not a mask, and propagates.
#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using veil::Index;
using veil::Tensor;
namespace mask = veil::mask;
namespace attention = veil::attention;

namespace {

struct Scenario {
  std::string name;
  Index B, H, Hkv, Lq, Lk, D, Dv;
  bool bias;  // an additive [B, H, Lq, Lk] bias that requires grad is part of the mask
  std::function<mask::Mask(const Tensor<float>& bias)> make;
};

struct Outcome {
  std::vector<float> out, lse, dq, dk, dv, dbias;
};

struct Data {
  std::vector<float> q, k, v, bias, grad_out;
};

Outcome run(const Scenario& s, const Data& d) {
  auto q = veil::from_vector<float>(d.q, {s.B, s.H, s.Lq, s.D}).set_requires_grad(true);
  auto k = veil::from_vector<float>(d.k, {s.B, s.Hkv, s.Lk, s.D}).set_requires_grad(true);
  auto v = veil::from_vector<float>(d.v, {s.B, s.Hkv, s.Lk, s.Dv}).set_requires_grad(true);
  Tensor<float> bias;
  if (s.bias) bias = veil::from_vector<float>(d.bias, {s.B, s.H, s.Lq, s.Lk}).set_requires_grad(true);
  auto result = attention::scaled_dot_product_attention_with_logsumexp(q, k, v, s.make(bias));
  result.output.backward(veil::from_vector<float>(d.grad_out, {s.B, s.H, s.Lq, s.Dv}));
  Outcome o{result.output.to_vector(), result.logsumexp.to_vector(), q.grad().to_vector(), k.grad().to_vector(),
            v.grad().to_vector(), {}};
  if (s.bias) o.dbias = bias.grad().to_vector();
  return o;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Index of the first differing element, or -1.
long first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  for (std::size_t e = 0; e < std::min(a.size(), b.size()); ++e)
    if (std::memcmp(&a[e], &b[e], sizeof(float)) != 0) return static_cast<long>(e);
  return a.size() == b.size() ? -1 : static_cast<long>(std::min(a.size(), b.size()));
}

std::vector<float> randn(veil::Generator& gen, Index count) { return veil::randn<float>({count}, gen).to_vector(); }

/// keep[b][h][i][j] as computed by the library's materialize (validated against hand counts below).
std::vector<bool> keep_of(const Scenario& s, const Tensor<float>& bias) {
  const auto keep = mask::materialize<float>(s.make(bias), s.B, s.H, s.Lq, s.Lk);
  return std::vector<bool>(keep.data(), keep.data() + keep.numel());
}

/// Which poisonings to run: all, or only the non-finite values written into V (see the known
/// issue below).
enum class Poisons { all, all_but_nonfinite_v, only_nonfinite_v };

void check_scenario(const Scenario& s, Index expected_dead_keys, Index expected_cut_bias_entries,
                    Poisons which = Poisons::all) {
  veil::Generator gen(99);
  Data clean{randn(gen, s.B * s.H * s.Lq * s.D), randn(gen, s.B * s.Hkv * s.Lk * s.D),
             randn(gen, s.B * s.Hkv * s.Lk * s.Dv), randn(gen, s.B * s.H * s.Lq * s.Lk),
             randn(gen, s.B * s.H * s.Lq * s.Dv)};
  const auto keep = keep_of(s, s.bias ? veil::from_vector<float>(clean.bias, {s.B, s.H, s.Lq, s.Lk}) : Tensor<float>());
  const Index G = s.H / s.Hkv;
  auto kept = [&](Index b, Index h, Index i, Index j) { return keep[static_cast<std::size_t>(((b * s.H + h) * s.Lq + i) * s.Lk + j)]; };

  // Keys no query of their (batch row, kv head) keeps.
  std::vector<bool> dead(static_cast<std::size_t>(s.B * s.Hkv * s.Lk), true);
  for (Index b = 0; b < s.B; ++b)
    for (Index h = 0; h < s.H; ++h)
      for (Index i = 0; i < s.Lq; ++i)
        for (Index j = 0; j < s.Lk; ++j)
          if (kept(b, h, i, j)) dead[static_cast<std::size_t>((b * s.Hkv + h / G) * s.Lk + j)] = false;
  Index dead_keys = 0, cut_entries = 0;
  for (bool x : dead) dead_keys += x ? 1 : 0;
  for (bool x : keep) cut_entries += x ? 0 : 1;
  INFO(s.name);
  REQUIRE(dead_keys == expected_dead_keys);  // the scenario really has keys masked for every query
  if (s.bias) REQUIRE(cut_entries == expected_cut_bias_entries);

  const Outcome baseline = run(s, clean);
  for (const auto& row : {baseline.out, baseline.lse, baseline.dq, baseline.dk, baseline.dv})
    for (float x : row) REQUIRE(!std::isnan(x));

  // dK, dV of dead keys, and d(bias) of cut entries, are exactly 0 already in the clean run.
  for (std::size_t key = 0; key < dead.size(); ++key)
    if (dead[key]) {
      for (Index c = 0; c < s.D; ++c) REQUIRE(baseline.dk[key * s.D + c] == 0.0f);
      for (Index c = 0; c < s.Dv; ++c) REQUIRE(baseline.dv[key * s.Dv + c] == 0.0f);
    }
  if (s.bias)
    for (std::size_t e = 0; e < keep.size(); ++e)
      if (!keep[e]) REQUIRE(baseline.dbias[e] == 0.0f);

  const float poisons[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(), 1e30f, -1e30f};
  for (float poison : poisons) {
    for (int where = 0; where < 4; ++where) {  // K only, V only, bias only, everything
      const bool nonfinite_v = !std::isfinite(poison) && (where == 1 || where == 3);
      if ((which == Poisons::all_but_nonfinite_v && nonfinite_v) || (which == Poisons::only_nonfinite_v && !nonfinite_v))
        continue;
      Data dirty = clean;
      if (where == 0 || where == 3)
        for (std::size_t key = 0; key < dead.size(); ++key)
          if (dead[key])
            for (Index c = 0; c < s.D; ++c) dirty.k[key * s.D + c] = poison;
      if (where == 1 || where == 3)
        for (std::size_t key = 0; key < dead.size(); ++key)
          if (dead[key])
            for (Index c = 0; c < s.Dv; ++c) dirty.v[key * s.Dv + c] = poison;
      if ((where == 2 || where == 3) && s.bias) {
        if (poison == -std::numeric_limits<float>::infinity()) continue;  // -inf in a bias is itself a cut
        for (std::size_t e = 0; e < keep.size(); ++e)
          if (!keep[e]) dirty.bias[e] = poison;
      }
      const Outcome o = run(s, dirty);
      INFO("poison " << poison << " written into " << (where == 0 ? "K" : where == 1 ? "V" : where == 2 ? "bias" : "K, V and bias"));
      INFO("first difference: out " << first_difference(o.out, baseline.out) << ", lse "
                                    << first_difference(o.lse, baseline.lse) << ", dq "
                                    << first_difference(o.dq, baseline.dq) << ", dk "
                                    << first_difference(o.dk, baseline.dk) << ", dv "
                                    << first_difference(o.dv, baseline.dv));
      CHECK(bit_identical(o.out, baseline.out));
      CHECK(bit_identical(o.lse, baseline.lse));
      CHECK(bit_identical(o.dq, baseline.dq));
      CHECK(bit_identical(o.dk, baseline.dk));
      CHECK(bit_identical(o.dv, baseline.dv));
      if (s.bias) CHECK(bit_identical(o.dbias, baseline.dbias));
    }
  }
}

Tensor<bool> allow_with_dead_columns(Index B, Index H, Index Lq, Index Lk) {
  // Keys j % 7 == 3 are cut for every query (of every head); the rest keep a checkerboard-ish
  // pattern with at least one key per row.
  Tensor<bool> allowed = veil::zeros<bool>({B, 1, Lq, Lk});
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) allowed.data()[(b * Lq + i) * Lk + j] = j % 7 != 3 && (i + j + b) % 3 != 0;
  (void)H;
  return allowed;
}

}  // namespace

TEST_CASE("NaN, inf and 1e30 in keys cut by key_padding change no output or gradient bit",
          "[attention][cut_edges][key_padding]") {
  // GQA (H = 4, Hkv = 2), Lk = 150 crosses a 128-key tile; batch row 1 keeps 37 keys of tile 0
  // only, so tile 1 is empty for it and tile 0 partial.
  const Scenario s{"key_padding({100, 37})", 2, 4, 2, 70, 150, 16, 12, false,
                   [](const Tensor<float>&) { return mask::key_padding({100, 37}); }};
  check_scenario(s, /*dead keys*/ 2 * (50 + 113), 0);
}

TEST_CASE("NaN, inf and 1e30 in keys of a packed sequence without queries change nothing under documents & causal",
          "[attention][cut_edges][documents]") {
  // Query sequences {0..29}, {} , {30..79}; key sequences {0..39}, {40..89}, {90..129}: keys 40..89
  // belong to a sequence with no queries. With causal (shift Lk - Lq = 50), query i of sequence 0
  // keeps keys j <= i + 50 of 0..39 (all of them), sequence 2 keeps keys 90..min(129, i + 50).
  const Scenario s{"documents_from_offsets({0, 30, 30, 80}, {0, 40, 90, 130}) & causal()", 1, 2, 1, 80, 130, 8, 8,
                   false, [](const Tensor<float>&) {
                     return mask::documents_from_offsets({0, 30, 30, 80}, {0, 40, 90, 130}) & mask::causal();
                   }};
  check_scenario(s, 50, 0);
}

TEST_CASE("NaN, inf and 1e30 in keys packed with documents & causal cut for every query change nothing",
          "[attention][cut_edges][documents]") {
  // Self-attention packing: every key is kept by its own query, so here only the bias entries of
  // cut edges (other documents and the future) are poisoned.
  const Scenario s{"documents({40, 0, 90, 20}) & causal() & additive(bias)", 2, 2, 2, 150, 150, 8, 8, true,
                   [](const Tensor<float>& bias) {
                     return mask::documents({40, 0, 90, 20}) & mask::causal() & mask::additive(bias);
                   }};
  // kept per batch row and head: 40·41/2 + 90·91/2 + 20·21/2 = 820 + 4095 + 210 = 5125
  check_scenario(s, 0, 2 * 2 * (150 * 150 - 5125));
}

Scenario allow_and_additive_scenario() {
  const Index B = 2, H = 2, Lq = 67, Lk = 140;
  const Tensor<bool> allowed = allow_with_dead_columns(B, H, Lq, Lk);
  return {"allow(pattern) & additive(bias)", B, H, 1, Lq, Lk, 8, 5, true,
          [allowed](const Tensor<float>& bias) { return mask::allow(allowed) & mask::additive(bias); }};
}

Index allow_and_additive_cut_entries() {
  const Index B = 2, H = 2, Lq = 67, Lk = 140;
  Index kept = 0;
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) kept += (j % 7 != 3 && (i + j + b) % 3 != 0) ? 1 : 0;
  return B * H * Lq * Lk - H * kept;
}

TEST_CASE("NaN, inf and 1e30 in keys and bias entries cut by allow & additive change nothing",
          "[attention][cut_edges][allow][additive]") {
  // 20 keys (j % 7 == 3, j < 140) per batch row are cut for every query.
  check_scenario(allow_and_additive_scenario(), 2 * 20, allow_and_additive_cut_entries(), Poisons::all_but_nonfinite_v);
}

// Regression: partial tiles of a dense mask whose V (or K) tile holds a non-finite value used to
// take an exact masked loop instead of the GEMM, summing in another order, so output, dq, dk and
// d(bias) differed from the clean run in the last bits. Interval masks never hit this because
// their partial tiles are trimmed to the kept keys.
TEST_CASE("NaN and inf in values cut by a dense allow mask change no output or gradient bit",
          "[attention][cut_edges][allow]") {
  check_scenario(allow_and_additive_scenario(), 2 * 20, allow_and_additive_cut_entries(), Poisons::only_nonfinite_v);
}

TEST_CASE("NaN, inf and 1e30 above the diagonal of a causal bias with Lq < Lk change nothing",
          "[attention][cut_edges][causal]") {
  // causal() with Lq = 40 < Lk = 170: bottom-right aligned, query i keeps j <= i + 130; the last
  // query keeps every key, so the cut entries are bias entries. causal_top_left() below cuts keys.
  const Scenario s{"causal() & additive(bias), Lq < Lk", 1, 2, 1, 40, 170, 8, 8, true,
                   [](const Tensor<float>& bias) { return mask::causal() & mask::additive(bias); }};
  check_scenario(s, 0, 2 * (39 * 40 / 2));
}

TEST_CASE("NaN, inf and 1e30 in keys no query reaches under causal_top_left with Lq < Lk change nothing",
          "[attention][cut_edges][causal]") {
  // Query i keeps j <= i: keys 40..169 are cut for all queries (a whole empty tile, 128..169, and
  // the tail of a partial one).
  const Scenario s{"causal_top_left(), Lq < Lk", 1, 2, 1, 40, 170, 8, 8, false,
                   [](const Tensor<float>&) { return mask::causal_top_left(); }};
  check_scenario(s, 130, 0);
}

TEST_CASE("NaN in a kept key, value or bias entry propagates to the output", "[attention][cut_edges][nan]") {
  veil::Generator gen(5);
  const Index Lq = 5, Lk = 9, D = 4;
  for (int where = 0; where < 3; ++where) {
    auto q = veil::randn<float>({2, 1, Lq, D}, gen);
    auto k = veil::randn<float>({2, 1, Lk, D}, gen);
    auto v = veil::randn<float>({2, 1, Lk, D}, gen);
    auto bias = veil::randn<float>({2, 1, Lq, Lk}, gen);
    // Key 2 of batch row 0 is kept by queries 2..4 (causal, Lq != Lk: i + 4 >= 2 for all i) and
    // within key_padding({6, 9}).
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (where == 0) k.data()[2 * D + 1] = nan;
    if (where == 1) v.data()[2 * D + 3] = nan;
    if (where == 2) bias.data()[1 * Lk + 2] = nan;  // edge (b=0, i=1, j=2)
    const auto m = mask::key_padding({6, 9}) & mask::causal() & mask::additive(bias);
    const auto out = veil::scaled_dot_product_attention(q, k, v, m).to_vector();
    INFO("NaN in " << (where == 0 ? "k" : where == 1 ? "v" : "bias"));
    // Batch row 0: every query keeps key 2 (i + 4 >= 2), so NaN in k poisons every output of
    // batch row 0, NaN in v[.., 3] column 3 of every row, and a NaN bias entry only row i = 1.
    // Batch row 1 stays finite.
    for (Index i = 0; i < Lq; ++i) {
      for (Index d = 0; d < D; ++d) {
        const bool poisoned = where == 0 || (where == 1 && d == 3) || (where == 2 && i == 1);
        CHECK(std::isnan(out[i * D + d]) == poisoned);
        CHECK(std::isfinite(out[(Lq + i) * D + d]));
      }
    }
  }
}

TEST_CASE("+inf in a kept bias entry gives NaN in its row instead of a clamped value", "[attention][cut_edges][inf]") {
  // softmax over a row holding +inf is inf / inf (PyTorch and JAX agree): the row is NaN, never a
  // silently clamped one-hot, and the other rows are untouched.
  veil::Generator gen(6);
  const Index Lq = 6, Lk = 140, D = 4;
  const auto q = veil::randn<float>({1, 1, Lq, D}, gen), k = veil::randn<float>({1, 1, Lk, D}, gen);
  const auto v = veil::randn<float>({1, 1, Lk, D}, gen);
  auto bias = veil::randn<float>({Lq, Lk}, gen);
  bias.data()[2 * Lk + 131] = std::numeric_limits<float>::infinity();  // row 2, in the second key tile
  for (bool reference : {false, true}) {
    INFO((reference ? "reference" : "fused"));
    const auto out = (reference ? attention::reference_attention(q, k, v, mask::additive(bias)).output
                                : veil::scaled_dot_product_attention(q, k, v, mask::additive(bias)))
                         .to_vector();
    for (Index i = 0; i < Lq; ++i)
      for (Index d = 0; d < D; ++d) CHECK(std::isnan(out[i * D + d]) == (i == 2));
  }
}

TEST_CASE("Biases of -1e30 and the lowest float are finite biases, not cuts", "[attention][cut_edges][bias]") {
  // Only -inf cuts an edge. A row whose bias is -1e30 everywhere still attends: the common offset
  // cancels in the softmax, so its weights are those of the scores alone, and its logsumexp is
  // finite. A single -1e30 next to finite entries gets a weight and a gradient of 0 up to float's
  // smallest magnitudes (exp of -1e30 underflows; an edge is only exactly 0 when it is cut).
  veil::Generator gen(7);
  const Index Lq = 5, Lk = 9, D = 4;
  const auto q = veil::randn<float>({1, 1, Lq, D}, gen), k = veil::randn<float>({1, 1, Lk, D}, gen);
  const auto v = veil::randn<float>({1, 1, Lk, D}, gen);
  for (const float huge : {-1e30f, std::numeric_limits<float>::lowest()}) {
    INFO("bias value " << huge);
    auto bias = veil::zeros<float>({Lq, Lk});
    for (Index j = 0; j < Lk; ++j) bias.data()[1 * Lk + j] = huge;  // row 1: every entry
    bias.data()[3 * Lk + 4] = huge;                                  // row 3: one entry
    bias.set_requires_grad(true);
    CHECK(mask::materialize(mask::additive(bias), 1, 1, Lq, Lk).to_vector() ==
          std::vector<bool>(static_cast<std::size_t>(Lq * Lk), true));
    const auto result = attention::scaled_dot_product_attention_with_logsumexp(q, k, v, mask::additive(bias));
    const auto plain = veil::scaled_dot_product_attention(q, k, v);
    veil::sum(result.output).backward();
    const auto out = result.output.to_vector(), lse = result.logsumexp.to_vector(), expected = plain.to_vector();
    CHECK(std::isfinite(lse[1]));
    CHECK(lse[1] < -1e29);
    // The scores (|q·k| < 10) vanish next to 1e30 in float, so row 1 weighs every key equally.
    for (Index d = 0; d < D; ++d) {
      double mean = 0;
      for (Index j = 0; j < Lk; ++j) mean += v.to_vector()[j * D + d];
      CHECK(out[1 * D + d] == Approx(mean / Lk).margin(1e-6));
    }
    for (Index i : {0, 2, 4})
      for (Index d = 0; d < D; ++d) CHECK(out[i * D + d] == Approx(expected[i * D + d]).margin(1e-6));
    const auto dbias = bias.grad().to_vector();
    CHECK(std::abs(dbias[3 * Lk + 4]) < 1e-30f);
    for (float g : dbias) CHECK(std::isfinite(g));
  }
}

TEST_CASE("Scores of magnitude 1e4 to 1e30 give finite outputs and gradients", "[attention][cut_edges][overflow]") {
  // The max is subtracted before exp, so a huge scale only sharpens the softmax: at 1e30 every
  // row attends to its highest-scoring key alone, and nothing overflows on the way back.
  veil::Generator gen(8);
  const Index Lq = 7, Lk = 130, D = 8;
  const auto q0 = veil::randn<float>({1, 2, Lq, D}, gen), k0 = veil::randn<float>({1, 2, Lk, D}, gen);
  const auto v0 = veil::randn<float>({1, 2, Lk, D}, gen);
  for (const double scale : {1e4, 1e30}) {
    INFO("scale " << scale);
    auto q = q0.detach().contiguous().detach().set_requires_grad(true);
    auto k = k0.detach().contiguous().detach().set_requires_grad(true);
    auto v = v0.detach().contiguous().detach().set_requires_grad(true);
    const auto out = veil::scaled_dot_product_attention(q, k, v, mask::causal_top_left(), {.scale = scale});
    veil::sum(out).backward();
    for (const Tensor<float>& t : {out, q.grad(), k.grad(), v.grad()})
      for (float e : t.to_vector()) REQUIRE(std::isfinite(e));
    if (scale < 1e30) continue;
    const auto qs = q0.to_vector(), ks = k0.to_vector(), vs = v0.to_vector(), o = out.to_vector();
    for (Index h = 0; h < 2; ++h)
      for (Index i = 0; i < Lq; ++i) {
        Index best = 0;
        double best_score = -std::numeric_limits<double>::infinity();
        for (Index j = 0; j <= i; ++j) {
          double score = 0;
          for (Index d = 0; d < D; ++d) score += double(qs[(h * Lq + i) * D + d]) * ks[(h * Lk + j) * D + d];
          if (score > best_score) best_score = score, best = j;
        }
        for (Index d = 0; d < D; ++d) CHECK(o[(h * Lq + i) * D + d] == Approx(vs[(h * Lk + best) * D + d]).margin(1e-6));
      }
  }
}

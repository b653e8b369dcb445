#include <veil/attention.hpp>

#include <catch2/catch.hpp>

#include "support/message_contains.hpp"

#include <cstdint>
#include <limits>
#include <vector>

using veil::Index;
using veil::MaskError;
using veil::Tensor;
using veil::attention::PackedSequences;
using veil_test::MessageContains;

namespace {

std::vector<bool> bools_of(const Tensor<bool>& t) {
  const auto values = t.to_vector();
  return std::vector<bool>(values.begin(), values.end());
}

bool same_keep_pattern(const veil::mask::Mask& a, const veil::mask::Mask& b, Index batch, Index length) {
  return bools_of(veil::mask::materialize(a, batch, 1, length, length)) ==
         bools_of(veil::mask::materialize(b, batch, 1, length, length));
}

}  // namespace

TEST_CASE("PackedSequences: positions, loss mask and targets of a small packing, by hand", "[attention][packing]") {
  // Documents of 3, 1 and 4 tokens in a row of 8:  a a a | b | c c c c
  const auto packing = PackedSequences::from_lengths({3, 1, 4});
  CHECK(packing.rows() == 1);
  CHECK(packing.length() == 8);
  CHECK(packing.offsets() == std::vector<Index>{0, 3, 4, 8});
  CHECK(packing.cu_seqlens() == std::vector<Index>{0, 3, 4, 8});

  const auto positions = packing.position_ids();
  CHECK(positions.shape() == veil::Shape{1, 8});
  CHECK(positions.to_vector() == std::vector<std::int64_t>{0, 1, 2, 0, 0, 1, 2, 3});

  // Loss is skipped at the last token of each document: positions 2, 3 and 7.
  const auto loss_mask = packing.loss_mask();
  CHECK(loss_mask.shape() == veil::Shape{1, 8});
  CHECK(bools_of(loss_mask) == std::vector<bool>{true, true, false, false, true, true, true, false});

  // tokens [B, L + 1] = 10..18: targets are the next token, -100 at document ends.
  const auto tokens = veil::from_vector<std::int64_t>({10, 11, 12, 13, 14, 15, 16, 17, 18}, {1, 9});
  const auto targets = packing.targets(tokens);
  CHECK(targets.shape() == veil::Shape{1, 8});
  CHECK(targets.to_vector() == std::vector<std::int64_t>{11, 12, -100, -100, 15, 16, 17, -100});

  // tokens [B, L] give the same targets: the row's last token always ends a document.
  const auto short_tokens = veil::from_vector<std::int64_t>({10, 11, 12, 13, 14, 15, 16, 17}, {1, 8});
  CHECK(packing.targets(short_tokens, -1).to_vector() == std::vector<std::int64_t>{11, 12, -1, -1, 15, 16, 17, -1});

  // A shared packing serves any batch size.
  const auto two_rows = veil::from_vector<std::int64_t>({10, 11, 12, 13, 14, 15, 16, 17, 18,  //
                                                         20, 21, 22, 23, 24, 25, 26, 27, 28},
                                                        {2, 9});
  CHECK(packing.targets(two_rows).to_vector() ==
        std::vector<std::int64_t>{11, 12, -100, -100, 15, 16, 17, -100, 21, 22, -100, -100, 25, 26, 27, -100});
}

TEST_CASE("PackedSequences: targets feed cross_entropy without loss across boundaries", "[attention][packing]") {
  const auto packing = PackedSequences::from_lengths({2, 2});
  const auto tokens = veil::from_vector<std::int64_t>({0, 1, 2, 3, 0}, {1, 5});
  const auto targets = packing.targets(tokens);
  CHECK(targets.to_vector() == std::vector<std::int64_t>{1, -100, 3, -100});
  // Logits that predict every kept target perfectly and the cross-boundary ones terribly: the
  // loss only sees the former.
  auto logits = veil::from_vector<double>({0, 50, 0, 0,   //
                                           50, 0, 0, 0,   // position 1 would "predict" token 2
                                           0, 0, 0, 50,   //
                                           50, 0, 0, 0},  // position 3 would "predict" token 0
                                          {1, 4, 4});
  CHECK(veil::cross_entropy(veil::reshape(logits, {4, 4}), veil::reshape(targets, {4})).item() ==
        Approx(0).margin(1e-12));
}

TEST_CASE("PackedSequences: per-row packings", "[attention][packing]") {
  const auto packing = PackedSequences::from_lengths(std::vector<std::vector<Index>>{{2, 3}, {5}, {1, 0, 4}});
  CHECK(packing.rows() == 3);
  CHECK(packing.length() == 5);
  CHECK(packing.offsets(2) == std::vector<Index>{0, 1, 1, 5});
  CHECK(packing.cu_seqlens() == std::vector<Index>{0, 2, 5, 10, 11, 11, 15});
  CHECK(packing.position_ids().to_vector() ==
        std::vector<std::int64_t>{0, 1, 0, 1, 2,  //
                                  0, 1, 2, 3, 4,  //
                                  0, 0, 1, 2, 3});
  CHECK(bools_of(packing.loss_mask()) == std::vector<bool>{true, false, true, true, false,   //
                                                           true, true, true, true, false,    //
                                                           false, true, true, true, false});
  const auto tokens = veil::arange<std::int64_t>(18).reshape({3, 6});
  CHECK(packing.targets(tokens).to_vector() == std::vector<std::int64_t>{1, -100, 3, 4, -100,      //
                                                                         7, 8, 9, 10, -100,        //
                                                                         -100, 14, 15, 16, -100});
  REQUIRE_THROWS_MATCHES(packing.targets(veil::zeros<std::int64_t>({2, 6})), veil::ShapeError,
                         MessageContains("describes 3 batch rows but tokens has 2"));
  CHECK(same_keep_pattern(packing.mask(), veil::mask::documents({{2, 3}, {5}, {1, 0, 4}}) & veil::mask::causal(), 3,
                          5));
}

TEST_CASE("PackedSequences: mask() is documents(lengths) & causal()", "[attention][packing]") {
  const std::vector<Index> lengths{3, 1, 4};
  const auto packing = PackedSequences::from_lengths(lengths);
  CHECK(same_keep_pattern(packing.mask(), veil::mask::documents(lengths) & veil::mask::causal(), 2, 8));
  CHECK(same_keep_pattern(packing.mask(false), veil::mask::documents(lengths), 2, 8));

  // Spelled out for the first two documents: row i keeps j in [start of i's document, i].
  const auto keep = bools_of(veil::mask::materialize(packing.mask(), 1, 1, 8, 8));
  const std::vector<Index> document_start{0, 0, 0, 3, 4, 4, 4, 4};
  for (Index i = 0; i < 8; ++i)
    for (Index j = 0; j < 8; ++j) CHECK(keep[i * 8 + j] == (j >= document_start[i] && j <= i));

  // And the fused attention accepts it with any batch size.
  veil::Generator gen(3);
  const auto q = veil::randn<float>({2, 2, 8, 4}, gen), k = veil::randn<float>({2, 2, 8, 4}, gen),
             v = veil::randn<float>({2, 2, 8, 4}, gen);
  const auto fused = veil::scaled_dot_product_attention(q, k, v, packing.mask()).to_vector();
  const auto reference = veil::attention::reference_attention(q, k, v, packing.mask()).output.to_vector();
  REQUIRE(fused.size() == reference.size());
  for (std::size_t e = 0; e < fused.size(); ++e) CHECK(fused[e] == Approx(reference[e]).margin(1e-5));
}

TEST_CASE("PackedSequences: malformed packings throw MaskError naming the problem", "[attention][packing]") {
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths({3, -1, 2}), MaskError,
                         MessageContains("lengths must be >= 0, got lengths[1] = -1"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths(std::vector<std::vector<Index>>{{4, 4}, {2, -2, 8}}),
                         MaskError, MessageContains("got row 1 lengths[1] = -2"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths(std::vector<std::vector<Index>>{{4, 4}, {3, 4}}), MaskError,
                         MessageContains("row 0 sums to 8 but row 1 sums to 7"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths(std::vector<Index>{}), MaskError,
                         MessageContains("at least one document length"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths(std::vector<std::vector<Index>>{}), MaskError,
                         MessageContains("at least one batch row"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths({0, 0}), MaskError, MessageContains("at least one token"));
  REQUIRE_THROWS_MATCHES(PackedSequences::from_lengths({std::numeric_limits<Index>::max(), 1}), MaskError,
                         MessageContains("must sum to at most 9223372036854775807, got lengths[1] = 1"));

  const auto packing = PackedSequences::from_lengths({2, 2});
  REQUIRE_THROWS_MATCHES(packing.targets(veil::zeros<std::int64_t>({1, 7})), veil::ShapeError,
                         MessageContains("must have 5 or 4 columns"));
  REQUIRE_THROWS_MATCHES(packing.targets(veil::zeros<std::int64_t>({5})), veil::ShapeError,
                         MessageContains("tokens must be [B, 5] or [B, 4], got [5]"));
  REQUIRE_THROWS_MATCHES(packing.offsets(1), veil::ValueError, MessageContains("row must be in [0, 1), got 1"));
  // The mask still validates against the attention call: a packing of 4 does not fit Lq = 5.
  REQUIRE_THROWS_AS(veil::mask::materialize(packing.mask(), 1, 1, 5, 5), MaskError);
}

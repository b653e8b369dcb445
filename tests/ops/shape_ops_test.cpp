#include <veil/autograd.hpp>
#include <veil/ops/shape_ops.hpp>

#include <catch2/catch.hpp>

#include "support/forward_backward.hpp"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "support/message_contains.hpp"

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil_test::MessageContains;
using Fn = veil_test::Function;

namespace {

Tensor<double> counting(const Shape& shape) {
  return veil::arange<double>(static_cast<double>(veil::numel_of(shape))).reshape(shape);
}

using veil_test::Outcome;

constexpr auto* run = &veil_test::run_forward_backward;

/// Every shape op, each written over x: [4, 3] (and y: [4, 3] where it takes two tensors).
struct OpCase {
  const char* name;
  Fn fn;
};

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases{
      {"reshape", [](const auto& in) { return veil::reshape(in[0], {2, 6}); }},
      {"reshape -1", [](const auto& in) { return veil::reshape(in[0], {3, -1}); }},
      {"view", [](const auto& in) { return veil::view(veil::contiguous(in[0]), {6, 2}); }},
      {"permute", [](const auto& in) { return veil::permute(veil::reshape(in[0], {2, 2, 3}), {2, 0, 1}); }},
      {"transpose", [](const auto& in) { return veil::transpose(in[0], 0, -1); }},
      {"member transpose + reshape", [](const auto& in) { return in[0].transpose(0, 1).reshape({12}); }},
      {"slice step 2", [](const auto& in) { return veil::slice(in[0], 0, 1, 4, 2); }},
      {"slice negative", [](const auto& in) { return veil::slice(in[0], 1, -2, 3); }},
      {"narrow", [](const auto& in) { return veil::narrow(in[0], 1, 1, 2); }},
      {"expand", [](const auto& in) { return veil::expand(veil::unsqueeze(in[0], 0), {2, 4, 3}); }},
      {"expand size-1", [](const auto& in) { return veil::expand(veil::narrow(in[0], 1, 2, 1), {4, 5}); }},
      {"unsqueeze", [](const auto& in) { return veil::unsqueeze(in[0], -1); }},
      {"squeeze", [](const auto& in) { return veil::squeeze(veil::narrow(in[0], 0, 2, 1), 0); }},
      {"contiguous", [](const auto& in) { return veil::contiguous(in[0]); }},
      {"cat dim 0", [](const auto& in) { return veil::cat<double>({in[0], in[1]}, 0); }},
      {"cat dim 1", [](const auto& in) { return veil::cat<double>({in[1], in[0], in[1]}, -1); }},
      {"split", [](const auto& in) {
         auto pieces = veil::split(in[0], 3, 0);  // extents 3 and 1
         return veil::cat<double>({pieces[1], pieces[0]}, 0);
       }},
      {"chunk", [](const auto& in) {
         auto pieces = veil::chunk(in[0], 2, 1);  // extents 2 and 1
         return veil::cat<double>({pieces[1], pieces[0]}, 1);
       }},
      {"index_select", [](const auto& in) {
         return veil::index_select(in[0], 0, veil::from_vector<std::int64_t>({3, 0, 3}, {3}));
       }},
      {"where", [](const auto& in) {
         return veil::where(veil::from_vector<bool>({true, false, false, true}, {4, 1}), in[0], in[1]);
       }},
      {"masked_fill", [](const auto& in) {
         return veil::masked_fill(in[0], veil::from_vector<bool>({false, true, false}, {3}), 7.0);
       }},
  };
  return cases;
}

}  // namespace

TEST_CASE("reshape and view keep row-major order and share storage when they can", "[ops][shape_ops]") {
  auto x = counting({2, 3});
  auto r = veil::reshape(x, {3, 2});
  CHECK(r.shape() == Shape{3, 2});
  CHECK(r.to_vector() == std::vector<double>{0, 1, 2, 3, 4, 5});
  CHECK(r.shares_storage_with(x));
  CHECK(veil::reshape(x, {-1}).shape() == Shape{6});
  CHECK(veil::reshape(x, {1, -1, 2}).shape() == Shape{1, 3, 2});
  CHECK(veil::view(x, {6}).shares_storage_with(x));
  // A transposed view reshapes in its own row-major order: [[0, 3], [1, 4], [2, 5]].
  auto t = veil::transpose(x, 0, 1);
  CHECK(veil::reshape(t, {6}).to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
  CHECK(veil::reshape(veil::zeros<double>({0, 3}), {3, 0}).shape() == Shape{3, 0});
}

TEST_CASE("reshape and view reject a wrong element count or a non-contiguous input", "[ops][shape_ops]") {
  auto x = counting({2, 3});
  REQUIRE_THROWS_MATCHES(veil::reshape(x, {4, 2}), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("[4, 2]") && MessageContains("8 elements"));
  REQUIRE_THROWS_MATCHES(veil::reshape(x, {4, -1}), veil::ShapeError, MessageContains("[2, 3]") && MessageContains("[4, -1]"));
  REQUIRE_THROWS_MATCHES(veil::reshape(x, {-1, -1}), veil::ShapeError, MessageContains("only one dimension can be -1"));
  REQUIRE_THROWS_MATCHES(veil::reshape(x, {-2, 3}), veil::ShapeError, MessageContains("[-2, 3]"));
  REQUIRE_THROWS_MATCHES(veil::view(veil::transpose(x, 0, 1), {6}), veil::ShapeError,
                         MessageContains("[3, 2]") && MessageContains("not contiguous"));
}

TEST_CASE("permute and transpose reorder dimensions without copying", "[ops][shape_ops]") {
  auto x = counting({2, 3, 4});
  auto p = veil::permute(x, {2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.shares_storage_with(x));
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) CHECK(p.at({k, i, j}) == x.at({i, j, k}));
  auto t = veil::transpose(x, -1, 0);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK(t.at({3, 1, 1}) == x.at({1, 1, 3}));
  CHECK(veil::transpose(t, 0, 2).is_contiguous());
  CHECK(veil::permute(x, {-1, 0, 1}).shape() == Shape{4, 2, 3});
}

TEST_CASE("permute and transpose reject bad orders and dimensions", "[ops][shape_ops]") {
  auto x = counting({2, 3, 4});
  REQUIRE_THROWS_MATCHES(veil::permute(x, {0, 1}), veil::ShapeError,
                         MessageContains("2 entries") && MessageContains("rank 3") && MessageContains("[2, 3, 4]"));
  REQUIRE_THROWS_MATCHES(veil::permute(x, {0, 1, 0}), veil::ShapeError, MessageContains("[0, 1, 0]") && MessageContains("repeats"));
  REQUIRE_THROWS_MATCHES(veil::permute(x, {0, 1, 3}), veil::ValueError, MessageContains("[-3, 2]") && MessageContains("got 3"));
  REQUIRE_THROWS_MATCHES(veil::transpose(x, 0, 5), veil::ValueError, MessageContains("transpose dim1") && MessageContains("got 5"));
}

TEST_CASE("slice and narrow pick ranges like Python slices", "[ops][shape_ops]") {
  auto v = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {6});
  CHECK(veil::slice(v, 0, 1, 5, 2).to_vector() == std::vector<double>{2, 4});
  CHECK(veil::slice(v, 0, -3, 6).to_vector() == std::vector<double>{4, 5, 6});
  CHECK(veil::slice(v, 0, 4, 100).to_vector() == std::vector<double>{5, 6});  // end clamped
  CHECK(veil::slice(v, 0, 5, 2).shape() == Shape{0});                        // end before start: empty
  CHECK(veil::slice(v, 0, 1, 6, 4).to_vector() == std::vector<double>{2, 6});
  auto m = counting({3, 4});
  auto s = veil::slice(m, 1, 1, 3);
  CHECK(s.shape() == Shape{3, 2});
  CHECK(s.to_vector() == std::vector<double>{1, 2, 5, 6, 9, 10});
  CHECK(s.shares_storage_with(m));
  CHECK(veil::narrow(m, 0, 1, 2).to_vector() == std::vector<double>{4, 5, 6, 7, 8, 9, 10, 11});
  CHECK(veil::narrow(m, -1, 3, 1).to_vector() == std::vector<double>{3, 7, 11});
  REQUIRE_THROWS_MATCHES(veil::slice(v, 0, 0, 6, 0), veil::ValueError, MessageContains("step must be > 0, got 0"));
  REQUIRE_THROWS_MATCHES(veil::slice(v, 1, 0, 6), veil::ValueError, MessageContains("[-1, 0]") && MessageContains("got 1"));
  REQUIRE_THROWS_MATCHES(veil::narrow(m, 1, 3, 2), veil::ValueError,
                         MessageContains("start 3") && MessageContains("length 2") && MessageContains("extent 4"));
}

TEST_CASE("expand broadcasts without copying and its gradient sums back", "[ops][shape_ops]") {
  auto x = veil::from_vector<double>({1, 2, 3}, {3, 1}).set_requires_grad(true);
  auto e = veil::expand(x, {2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.shares_storage_with(x));
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.at({1, 2, 3}) == 3);
  e.backward(veil::ones<double>({2, 3, 4}));
  CHECK(x.grad().to_vector() == std::vector<double>{8, 8, 8});
  CHECK(veil::expand(veil::zeros<double>({1, 3}), {0, 3}).shape() == Shape{0, 3});
  REQUIRE_THROWS_MATCHES(veil::expand(veil::zeros<double>({3, 1}), {2, 4}), veil::ShapeError,
                         MessageContains("[3, 1]") && MessageContains("[2, 4]"));
  REQUIRE_THROWS_MATCHES(veil::expand(veil::zeros<double>({2, 3}), {3}), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("[3]"));
}

TEST_CASE("squeeze and unsqueeze remove and insert extent-1 dimensions", "[ops][shape_ops]") {
  auto x = counting({2, 3});
  CHECK(veil::unsqueeze(x, 0).shape() == Shape{1, 2, 3});
  CHECK(veil::unsqueeze(x, 1).shape() == Shape{2, 1, 3});
  CHECK(veil::unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  CHECK(veil::unsqueeze(x, -1).to_vector() == x.to_vector());
  CHECK(veil::squeeze(veil::unsqueeze(x, 1), 1).shape() == Shape{2, 3});
  CHECK(veil::unsqueeze(veil::scalar<double>(4), 0).shape() == Shape{1});
  REQUIRE_THROWS_MATCHES(veil::squeeze(x, 1), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("extent 3, expected 1"));
  REQUIRE_THROWS_MATCHES(veil::unsqueeze(x, 3), veil::ValueError, MessageContains("[-3, 2]") && MessageContains("got 3"));
}

TEST_CASE("contiguous copies a view into row-major order and leaves contiguous tensors alone", "[ops][shape_ops]") {
  auto x = counting({2, 3});
  CHECK(veil::contiguous(x).shares_storage_with(x));
  auto c = veil::transpose(x, 0, 1).contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.shares_storage_with(x));
  CHECK(c.to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("cat joins along a dimension and routes each gradient slice back", "[ops][shape_ops]") {
  auto a = veil::from_vector<double>({1, 2, 3, 4}, {2, 2}).set_requires_grad(true);
  auto b = veil::from_vector<double>({5, 6}, {1, 2}).set_requires_grad(true);
  auto rows = veil::cat<double>({a, b}, 0);
  CHECK(rows.shape() == Shape{3, 2});
  CHECK(rows.to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
  rows.backward(veil::from_vector<double>({10, 20, 30, 40, 50, 60}, {3, 2}));
  CHECK(a.grad().to_vector() == std::vector<double>{10, 20, 30, 40});
  CHECK(b.grad().to_vector() == std::vector<double>{50, 60});
  auto columns = veil::cat<double>({a, veil::from_vector<double>({7, 8}, {2, 1}), veil::zeros<double>({2, 0})}, 1);
  CHECK(columns.to_vector() == std::vector<double>{1, 2, 7, 3, 4, 8});
  REQUIRE_THROWS_MATCHES(veil::cat<double>({a, veil::zeros<double>({2, 3})}, 0), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("[2, 2]") && MessageContains("dimension 0"));
  REQUIRE_THROWS_MATCHES(veil::cat<double>({a, veil::zeros<double>({2})}, 0), veil::ShapeError, MessageContains("[2]"));
  REQUIRE_THROWS_MATCHES(veil::cat<double>({}, 0), veil::ValueError, MessageContains("got none"));
}

TEST_CASE("split and chunk cut views of the given sizes", "[ops][shape_ops]") {
  auto v = veil::from_vector<double>({1, 2, 3, 4, 5}, {5});
  auto pieces = veil::split(v, 2, 0);
  REQUIRE(pieces.size() == 3);
  CHECK(pieces[0].to_vector() == std::vector<double>{1, 2});
  CHECK(pieces[1].to_vector() == std::vector<double>{3, 4});
  CHECK(pieces[2].to_vector() == std::vector<double>{5});
  CHECK(pieces[1].shares_storage_with(v));
  auto chunks = veil::chunk(v, 3, 0);  // ceil(5 / 3) = 2 per chunk
  REQUIRE(chunks.size() == 3);
  CHECK(chunks[2].to_vector() == std::vector<double>{5});
  CHECK(veil::chunk(counting({6}), 4, 0).size() == 3);  // ceil(6 / 4) = 2: three chunks, as in PyTorch
  auto m = counting({2, 4});
  auto halves = veil::chunk(m, 2, -1);
  CHECK(halves[1].to_vector() == std::vector<double>{2, 3, 6, 7});
  REQUIRE_THROWS_MATCHES(veil::split(v, 0, 0), veil::ValueError, MessageContains("split_size must be > 0, got 0"));
  REQUIRE_THROWS_MATCHES(veil::chunk(v, -1, 0), veil::ValueError, MessageContains("chunks must be > 0, got -1"));
}

TEST_CASE("index_select gathers rows and adds repeated rows' gradients", "[ops][shape_ops]") {
  auto x = counting({3, 2}).set_requires_grad(true);
  auto picked = veil::index_select(x, 0, veil::from_vector<std::int64_t>({2, 0, 2}, {3}));
  CHECK(picked.to_vector() == std::vector<double>{4, 5, 0, 1, 4, 5});
  picked.backward(veil::ones<double>({3, 2}));
  CHECK(x.grad().to_vector() == std::vector<double>{1, 1, 0, 0, 2, 2});
  auto columns = veil::index_select(counting({2, 3}), -1, veil::from_vector<std::int64_t>({1}, {1}));
  CHECK(columns.to_vector() == std::vector<double>{1, 4});
  CHECK(veil::index_select(counting({2, 3}), 0, veil::zeros<std::int64_t>({0})).shape() == Shape{0, 3});
  REQUIRE_THROWS_MATCHES(veil::index_select(counting({3, 2}), 0, veil::from_vector<std::int64_t>({0, 3}, {2})),
                         veil::ValueError, MessageContains("indices[1] = 3") && MessageContains("[0, 3)"));
  REQUIRE_THROWS_MATCHES(veil::index_select(counting({3, 2}), 0, veil::zeros<std::int64_t>({1, 1})), veil::ShapeError,
                         MessageContains("1-d") && MessageContains("[1, 1]"));
}

TEST_CASE("where picks per element with broadcasting and keeps NaN out of the other branch's gradient", "[ops][shape_ops]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto condition = veil::from_vector<bool>({true, false, true}, {3});
  auto a = veil::from_vector<double>({1, nan, 3, 4, nan, 6}, {2, 3}).set_requires_grad(true);
  auto b = veil::from_vector<double>({-1, -2}, {2, 1}).set_requires_grad(true);
  auto y = veil::where(condition, a, b);
  CHECK(y.to_vector() == std::vector<double>{1, -1, 3, 4, -2, 6});
  y.backward(veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}));
  CHECK(a.grad().to_vector() == std::vector<double>{1, 0, 3, 4, 0, 6});
  CHECK(b.grad().to_vector() == std::vector<double>{2, 5});
  REQUIRE_THROWS_MATCHES(veil::where(veil::zeros<bool>({4}), a, b), veil::ShapeError,
                         MessageContains("[4]") && MessageContains("[2, 3]"));
}

TEST_CASE("masked_fill writes the value where the mask holds and blocks the gradient there", "[ops][shape_ops]") {
  auto x = counting({2, 3}).set_requires_grad(true);
  auto mask = veil::from_vector<bool>({true, false, false, false, false, true}, {2, 3});
  auto y = veil::masked_fill(x, mask, -1.0);
  CHECK(y.to_vector() == std::vector<double>{-1, 1, 2, 3, 4, -1});
  y.backward(veil::ones<double>({2, 3}));
  CHECK(x.grad().to_vector() == std::vector<double>{0, 1, 1, 1, 1, 0});
  CHECK(veil::masked_fill(counting({2, 3}), veil::from_vector<bool>({true, false}, {2, 1}), 9.0).to_vector() ==
        std::vector<double>{9, 9, 9, 3, 4, 5});
  // The mask broadcasts to x, never x to the mask.
  REQUIRE_THROWS_MATCHES(veil::masked_fill(counting({3}), veil::zeros<bool>({2, 3}), 0.0), veil::ShapeError,
                         MessageContains("[2, 3]") && MessageContains("[3]"));
  REQUIRE_THROWS_MATCHES(veil::masked_fill(counting({2, 3}), veil::zeros<bool>({2}), 0.0), veil::ShapeError,
                         MessageContains("[2]") && MessageContains("[2, 3]"));
}

TEST_CASE("every shape op passes gradcheck", "[ops][shape_ops]") {
  veil::Generator gen(31);
  auto x = veil::randn<double>({4, 3}, gen).set_requires_grad(true);
  auto y = veil::randn<double>({4, 3}, gen).set_requires_grad(true);
  for (const auto& op : op_cases()) {
    INFO(op.name);
    const auto result = veil::gradcheck(op.fn, {x, y});
    INFO(result.message);
    CHECK(result.passed);
  }
}

TEST_CASE("every shape op gives the same values and gradients on views as on contiguous copies", "[ops][shape_ops]") {
  veil::Generator gen(32);
  auto x_view = veil::transpose(veil::randn<double>({3, 4}, gen), 0, 1);          // [4, 3], strides [1, 4]
  auto y_view = veil::slice(veil::randn<double>({4, 6}, gen), 1, 1, 6, 2);        // [4, 3], strides [6, 2]
  REQUIRE_FALSE(x_view.is_contiguous());
  REQUIRE_FALSE(y_view.is_contiguous());
  for (const auto& op : op_cases()) {
    INFO(op.name);
    const Outcome views = run(op.fn, {x_view, y_view});
    const Outcome copies = run(op.fn, {veil::detail::copy_contiguous(x_view), veil::detail::copy_contiguous(y_view)});
    CHECK(views.out == copies.out);
    CHECK(views.grads == copies.grads);
  }
}

TEST_CASE("every shape op's backward on a retained graph gives identical gradients twice", "[ops][shape_ops]") {
  veil::Generator gen(33);
  for (const auto& op : op_cases()) {
    INFO(op.name);
    auto x = veil::randn<double>({4, 3}, gen).set_requires_grad(true);
    auto y = veil::randn<double>({4, 3}, gen).set_requires_grad(true);
    auto out = op.fn({x, y});
    auto g = veil::randn<double>(out.shape(), gen);
    out.backward(g, /*retain_graph=*/true);
    const auto x_first = x.grad().to_vector();
    const auto y_first = y.grad().defined() ? y.grad().to_vector() : std::vector<double>{};
    x.zero_grad();
    y.zero_grad();
    out.backward(g, /*retain_graph=*/true);
    const auto x_second = x.grad().to_vector();
    const auto y_second = y.grad().defined() ? y.grad().to_vector() : std::vector<double>{};
    // Element-wise == is bit-identity here: no NaN occurs and ±0 would show in gradcheck anyway.
    CHECK(x_first == x_second);
    CHECK(y_first == y_second);
  }
}

TEST_CASE("squeeze and unsqueeze of a transposed tensor are views", "[ops][shape_ops]") {
  auto x = veil::transpose(veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}), 0, 1);
  auto up = veil::unsqueeze(x, 1);
  CHECK(up.shape() == Shape{3, 1, 2});
  CHECK(up.shares_storage_with(x));
  CHECK(up.to_vector() == std::vector<double>{1, 4, 2, 5, 3, 6});
  auto down = veil::squeeze(up, 1);
  CHECK(down.shares_storage_with(x));
  CHECK(down.to_vector() == x.to_vector());
  auto leaf = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).set_requires_grad(true);
  auto result = veil::gradcheck([](const auto& in) { return veil::unsqueeze(veil::transpose(in[0], 0, 1), 0); }, {leaf});
  INFO(result.message);
  CHECK(result.passed);
}

TEST_CASE("split of an empty dimension gives one empty piece", "[ops][shape_ops]") {
  auto x = veil::zeros<double>({0, 3});
  auto pieces = veil::split(x, 2, 0);
  REQUIRE(pieces.size() == 1);
  CHECK(pieces[0].shape() == Shape{0, 3});
}

TEST_CASE("dividing by a constant divides exactly", "[ops][elementwise]") {
  auto x = veil::from_vector<float>({1.0f, 10.0f, 0.3f});
  auto y = x / 3.0f;
  CHECK(y.to_vector() == std::vector<float>{1.0f / 3.0f, 10.0f / 3.0f, 0.3f / 3.0f});
}

TEST_CASE("A 0-d tensor transposes and squeezes to itself, and refuses slice, narrow and size with a ShapeError",
          "[ops][shape]") {
  // Dims 0 and -1 name a 0-d tensor (PyTorch's rule); there is no extent behind them to read.
  const auto x = veil::scalar<float>(2.5f).set_requires_grad(true);
  for (Index d : {Index{0}, Index{-1}}) {
    const auto t = veil::transpose(x, d, -1 - d);
    REQUIRE(t.shape().empty());
    REQUIRE(t.item() == 2.5f);
    const auto s = veil::squeeze(x, d);
    REQUIRE(s.shape().empty());
    REQUIRE(s.item() == 2.5f);
    REQUIRE_THROWS_AS(veil::slice(x, d, 0, 1), veil::ShapeError);
    REQUIRE_THROWS_AS(veil::narrow(x, d, 0, 1), veil::ShapeError);
    REQUIRE_THROWS_AS(x.size(d), veil::ShapeError);
  }
  veil::transpose(x, 0, 0).backward();
  REQUIRE(x.grad().item() == 1.0f);
}

TEST_CASE("expand refuses a negative extent instead of broadcasting a 1 to it", "[ops][shape]") {
  const auto x = veil::ones<float>({1, 1});
  REQUIRE_THROWS_MATCHES(veil::expand(x, {-2, -2}), veil::ShapeError, MessageContains("extents must be >= 0, got [-2, -2]"));
  REQUIRE_THROWS_AS(veil::expand(x, {3, -1}), veil::ShapeError);
  REQUIRE(veil::expand(x, {2, 0, 3}).shape() == Shape{2, 0, 3});
}

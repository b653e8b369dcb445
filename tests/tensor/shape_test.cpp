#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <limits>
#include <string>

using veil::Index;
using veil::Shape;

TEST_CASE("to_string spells shapes with brackets and commas", "[tensor][shape]") {
  CHECK(veil::to_string({}) == "[]");
  CHECK(veil::to_string({7}) == "[7]");
  CHECK(veil::to_string({2, 3, 4}) == "[2, 3, 4]");
}

TEST_CASE("broadcast_shapes of equal shapes is that shape", "[tensor][shape]") {
  CHECK(veil::broadcast_shapes({2, 3, 4}, {2, 3, 4}) == Shape{2, 3, 4});
  CHECK(veil::broadcast_shapes({}, {}) == Shape{});
}

TEST_CASE("broadcast_shapes stretches size-1 dimensions on either side", "[tensor][shape]") {
  CHECK(veil::broadcast_shapes({2, 1, 4}, {1, 3, 1}) == Shape{2, 3, 4});
  CHECK(veil::broadcast_shapes({1, 1}, {5, 6}) == Shape{5, 6});
  CHECK(veil::broadcast_shapes({5, 6}, {1, 1}) == Shape{5, 6});
}

TEST_CASE("broadcast_shapes treats missing leading dimensions as 1", "[tensor][shape]") {
  CHECK(veil::broadcast_shapes({2, 3, 4}, {4}) == Shape{2, 3, 4});
  CHECK(veil::broadcast_shapes({3, 1}, {7, 2, 1, 5}) == Shape{7, 2, 3, 5});
  CHECK(veil::broadcast_shapes({}, {2, 3}) == Shape{2, 3});
  CHECK(veil::broadcast_shapes({2, 3}, {}) == Shape{2, 3});
}

TEST_CASE("broadcast_shapes keeps 0-size dimensions and stretches 1 to 0", "[tensor][shape]") {
  CHECK(veil::broadcast_shapes({0, 3}, {1, 3}) == Shape{0, 3});
  CHECK(veil::broadcast_shapes({1}, {0}) == Shape{0});
  CHECK(veil::broadcast_shapes({0}, {0}) == Shape{0});
  CHECK(veil::broadcast_shapes({2, 0}, {2, 1}) == Shape{2, 0});
  CHECK(veil::broadcast_shapes({0, 1}, {1, 4}) == Shape{0, 4});
}

TEST_CASE("broadcast_shapes failure is a ShapeError naming both shapes and the dimension", "[tensor][shape]") {
  CHECK_THROWS_AS(veil::broadcast_shapes({2, 3}, {4}), veil::ShapeError);
  CHECK_THROWS_WITH(veil::broadcast_shapes({2, 3}, {4}, "add"),
                    "add: shapes [2, 3] and [4] do not broadcast (dimension 1: 3 vs 4)");
  CHECK_THROWS_WITH(veil::broadcast_shapes({0}, {2}), Catch::Contains("[0]") && Catch::Contains("[2]"));
  CHECK_THROWS_AS(veil::broadcast_shapes({2, 0}, {3}), veil::ShapeError);
}

TEST_CASE("contiguous_strides are row-major and treat 0 extents as 1", "[tensor][shape]") {
  CHECK(veil::contiguous_strides({}) == Shape{});
  CHECK(veil::contiguous_strides({5}) == Shape{1});
  CHECK(veil::contiguous_strides({2, 3, 4}) == Shape{12, 4, 1});
  CHECK(veil::contiguous_strides({2, 1, 4}) == Shape{4, 4, 1});
  CHECK(veil::contiguous_strides({2, 0, 3}) == Shape{3, 3, 1});  // PyTorch's strides for empty(2, 0, 3)
}

TEST_CASE("numel_of multiplies extents and is 1 for a 0-d shape and 0 with any 0 extent", "[tensor][shape]") {
  CHECK(veil::numel_of({}) == 1);
  CHECK(veil::numel_of({2, 3, 4}) == 24);
  CHECK(veil::numel_of({2, 0, 4}) == 0);
  const Index big = std::numeric_limits<Index>::max();
  CHECK(veil::numel_of({0, big, big}) == 0);
  CHECK(veil::numel_of({big}) == big);
}

TEST_CASE("numel_of throws ShapeError on overflow and on a negative extent", "[tensor][shape]") {
  const Index big = std::numeric_limits<Index>::max();
  CHECK_THROWS_AS(veil::numel_of({big, 2}), veil::ShapeError);
  CHECK_THROWS_AS(veil::numel_of({Index{1} << 32, Index{1} << 32}), veil::ShapeError);
  CHECK_THROWS_WITH(veil::numel_of({Index{1} << 32, Index{1} << 32}), Catch::Contains("overflows"));
  CHECK_NOTHROW(veil::numel_of({Index{1} << 31, Index{1} << 31}));
  CHECK_THROWS_AS(veil::numel_of({2, -1}), veil::ShapeError);
  CHECK_THROWS_WITH(veil::numel_of({2, -1}), Catch::Contains("[2, -1]"));
  // A shape whose element count overflows cannot become a tensor either.
  CHECK_THROWS_AS(veil::zeros<float>({big, big}), veil::ShapeError);
}

TEST_CASE("wrap_dim maps negative dimensions from the end and rejects out-of-range ones", "[tensor][shape]") {
  CHECK(veil::wrap_dim(0, 3) == 0);
  CHECK(veil::wrap_dim(2, 3) == 2);
  CHECK(veil::wrap_dim(-1, 3) == 2);
  CHECK(veil::wrap_dim(-3, 3) == 0);
  CHECK_THROWS_AS(veil::wrap_dim(3, 3), veil::ValueError);
  CHECK_THROWS_AS(veil::wrap_dim(-4, 3), veil::ValueError);
  CHECK_THROWS_WITH(veil::wrap_dim(5, 2, "softmax dim"),
                    "softmax dim: expected a dimension in [-2, 1] for a tensor of rank 2, got 5");
  // A 0-d tensor accepts 0 and -1 (like PyTorch), both meaning 0.
  CHECK(veil::wrap_dim(0, 0) == 0);
  CHECK(veil::wrap_dim(-1, 0) == 0);
  CHECK_THROWS_AS(veil::wrap_dim(1, 0), veil::ValueError);
}

TEST_CASE("broadcast_strides puts stride 0 on stretched and missing dimensions", "[tensor][shape]") {
  CHECK(veil::broadcast_strides({3, 1}, {1, 1}, {2, 3, 4}) == Shape{0, 1, 0});
  CHECK(veil::broadcast_strides({2, 3}, {3, 1}, {2, 3}) == Shape{3, 1});
  CHECK(veil::broadcast_strides({1}, {1}, {1}) == Shape{1});
}

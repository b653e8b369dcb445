#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

using veil::Index;
using veil::Shape;
using veil::Tensor;

namespace {

struct ThreadCountScope {
  int saved = veil::num_threads();
  explicit ThreadCountScope(int count) { veil::set_num_threads(count); }
  ~ThreadCountScope() { veil::set_num_threads(saved); }
};

template <class T>
std::string printed(const Tensor<T>& t) {
  std::ostringstream out;
  out << t;
  return out.str();
}

/// 0, 1, ..., n-1 as a contiguous float tensor of `shape`.
Tensor<float> iota(const Shape& shape) {
  return veil::arange<float>(static_cast<float>(veil::numel_of(shape))).reshape(shape);
}

}  // namespace

// ---- factories ----------------------------------------------------------------------------------

TEST_CASE("zeros and ones and full fill every element and take the given shape", "[tensor][creation]") {
  auto z = veil::zeros<float>({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.strides() == Shape{3, 1});
  CHECK(z.numel() == 6);
  CHECK(z.dim() == 2);
  CHECK(z.to_vector() == std::vector<float>(6, 0.0f));
  CHECK(veil::ones<double>({4}).to_vector() == std::vector<double>(4, 1.0));
  CHECK(veil::full<std::int64_t>({3, 1}, -7).to_vector() == std::vector<std::int64_t>{-7, -7, -7});
  CHECK(veil::full<bool>({2}, true).to_vector() == std::vector<bool>{true, true});
  CHECK_FALSE(z.requires_grad());
  CHECK(z.is_leaf());
  // Large enough to take the parallel fill path.
  const auto big = veil::full<float>({300, 300}, 2.5f).to_vector();
  CHECK(big == std::vector<float>(90000, 2.5f));
}

TEST_CASE("arange counts from start by step up to but excluding end", "[tensor][creation]") {
  CHECK(veil::arange<std::int64_t>(5).to_vector() == std::vector<std::int64_t>{0, 1, 2, 3, 4});
  CHECK(veil::arange<float>(0.0f, 1.0f, 0.25f).to_vector() == std::vector<float>{0.0f, 0.25f, 0.5f, 0.75f});
  CHECK(veil::arange<std::int64_t>(5, 0, -2).to_vector() == std::vector<std::int64_t>{5, 3, 1});
  CHECK(veil::arange<double>(2.0, 4.5).to_vector() == std::vector<double>{2.0, 3.0, 4.0});
  CHECK(veil::arange<float>(0.0f, 1.0f, 0.1f).numel() == 10);
  auto empty = veil::arange<float>(3.0f, 3.0f);
  CHECK(empty.shape() == Shape{0});
  CHECK(veil::arange<float>(3.0f, 1.0f).shape() == Shape{0});  // wrong direction: empty, like PyTorch
  CHECK_THROWS_AS(veil::arange<float>(0.0f, 1.0f, 0.0f), veil::ValueError);
}

TEST_CASE("from_vector keeps row-major order and defaults to a 1-d shape", "[tensor][creation]") {
  auto t = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.at({0, 2}) == 3.0);
  CHECK(t.at({1, 0}) == 4.0);
  auto flat = veil::from_vector<float>({1.5f, -2.0f});
  CHECK(flat.shape() == Shape{2});
  CHECK(flat.to_vector() == std::vector<float>{1.5f, -2.0f});
  auto none = veil::from_vector<float>(std::vector<float>{});
  CHECK(none.shape() == Shape{0});
  CHECK(none.numel() == 0);
  CHECK(veil::from_vector<float>({}, {2, 0}).shape() == Shape{2, 0});
}

TEST_CASE("from_vector with the wrong element count throws ShapeError naming shape and count", "[tensor][creation]") {
  CHECK_THROWS_AS(veil::from_vector<float>({1, 2, 3}, {2, 2}), veil::ShapeError);
  CHECK_THROWS_WITH(veil::from_vector<float>({1, 2, 3}, {2, 2}),
                    "from_vector: shape [2, 2] holds 4 elements, but values has 3");
}

TEST_CASE("scalar makes a 0-d tensor with one element", "[tensor][creation]") {
  auto s = veil::scalar<float>(3.5f);
  CHECK(s.dim() == 0);
  CHECK(s.shape() == Shape{});
  CHECK(s.numel() == 1);
  CHECK(s.item() == 3.5f);
  CHECK(s.at({}) == 3.5f);
  CHECK(s.to_vector() == std::vector<float>{3.5f});
  CHECK(s.is_contiguous());
}

TEST_CASE("zero-size tensors have no elements but keep their shape", "[tensor][creation]") {
  auto z = veil::zeros<float>({0, 3});
  CHECK(z.numel() == 0);
  CHECK(z.shape() == Shape{0, 3});
  CHECK(z.to_vector().empty());
  CHECK(z.is_contiguous());
  CHECK(z.contiguous().numel() == 0);
  CHECK(z.reshape({3, 0}).shape() == Shape{3, 0});
  CHECK(z.transpose(0, 1).to_vector().empty());
  CHECK_THROWS_AS(z.item(), veil::ShapeError);
  veil::Generator gen(1);
  CHECK(veil::randn<float>({4, 0}, gen).numel() == 0);
  CHECK(gen.counter() == 0);
}

// ---- element access -----------------------------------------------------------------------------

TEST_CASE("item returns the only element and rejects a tensor with several", "[tensor][access]") {
  CHECK(veil::full<double>({1, 1, 1}, 4.25).item() == 4.25);
  auto t = veil::zeros<float>({2});
  CHECK_THROWS_AS(t.item(), veil::ShapeError);
  CHECK_THROWS_WITH(t.item(), "item: expected a tensor with one element, got shape [2]");
  CHECK_THROWS_AS(Tensor<float>().item(), veil::ValueError);  // undefined tensor: an error, not a crash
}

TEST_CASE("at reads through strides and checks the index", "[tensor][access]") {
  auto t = iota({2, 3});
  auto tt = t.transpose(0, 1);
  CHECK(tt.at({2, 1}) == 5.0f);
  CHECK(tt.at({0, 1}) == 3.0f);
  CHECK_THROWS_AS(t.at({0}), veil::ShapeError);
  CHECK_THROWS_AS(t.at({2, 0}), veil::ValueError);
  CHECK_THROWS_AS(t.at({0, -1}), veil::ValueError);
  CHECK(t.size(-1) == 3);
  CHECK(t.size(0) == 2);
  CHECK_THROWS_AS(t.size(2), veil::ValueError);
}

TEST_CASE("an undefined tensor reports itself and throws ValueError on use", "[tensor][access]") {
  Tensor<float> t;
  CHECK_FALSE(t.defined());
  CHECK_THROWS_AS(t.shape(), veil::ValueError);
  CHECK_THROWS_AS(t.to_vector(), veil::ValueError);
  CHECK_THROWS_AS(t.grad(), veil::ValueError);
  CHECK_THROWS_AS(t.zero_grad(), veil::ValueError);
}

// ---- random -------------------------------------------------------------------------------------

TEST_CASE("a generator with the same seed gives the same values", "[tensor][random]") {
  veil::Generator a(42), b(42);
  CHECK(veil::randn<float>({50}, a).to_vector() == veil::randn<float>({50}, b).to_vector());
  CHECK(veil::rand<double>({50}, a).to_vector() == veil::rand<double>({50}, b).to_vector());
  CHECK(veil::randint<std::int64_t>({50}, a, 0, 1000).to_vector() ==
        veil::randint<std::int64_t>({50}, b, 0, 1000).to_vector());
  CHECK(a.counter() == b.counter());
}

TEST_CASE("different seeds and consecutive draws give different values", "[tensor][random]") {
  veil::Generator a(1), b(2);
  const auto first = veil::randn<double>({64}, a).to_vector();
  CHECK(first != veil::randn<double>({64}, b).to_vector());
  const auto second = veil::randn<double>({64}, a).to_vector();
  CHECK(first != second);
  for (std::size_t i = 0; i < first.size(); ++i) CHECK(first[i] != second[i]);
}

TEST_CASE("a generator advances by the number of uniform draws it hands out", "[tensor][random]") {
  veil::Generator gen(5);
  veil::rand<float>({3, 4}, gen);
  CHECK(gen.counter() == 12);
  veil::randint<std::int64_t>({5}, gen, 0, 3);
  CHECK(gen.counter() == 17);
  veil::randn<float>({6}, gen);
  CHECK(gen.counter() == 17 + 12);  // Box-Muller: two uniforms per normal value
}

TEST_CASE("randn and rand drawn one after the other from one generator use disjoint random bits", "[tensor][random]") {
  // Box-Muller turns two uniforms (u1, u2) into sqrt(-2 log(1 - u1)) cos(2 pi u2). If randn used
  // more counters than it reserved, the next rand would hand out the very uniforms randn consumed.
  veil::Generator gen(7);
  const auto normal = veil::randn<double>({2}, gen).to_vector();
  const auto uniform = veil::rand<double>({2}, gen).to_vector();
  const double rebuilt = std::sqrt(-2.0 * std::log(1.0 - uniform[0])) * std::cos(6.283185307179586 * uniform[1]);
  CHECK_FALSE(normal[1] == Approx(rebuilt).margin(1e-12));
  const auto more_normal = veil::randn<double>({2}, gen).to_vector();
  CHECK_FALSE(more_normal[0] == Approx(normal[1]).margin(1e-12));
}

TEST_CASE("randn has mean 0 and standard deviation 1 on 100k samples", "[tensor][random]") {
  // The sample mean of n standard normals has standard error 1/sqrt(n) = 0.0032 and the sample
  // standard deviation about 1/sqrt(2n) = 0.0022; the tolerances are 5 standard errors, so a
  // correct generator fails them with probability < 1e-6 for any seed.
  veil::Generator gen(2024);
  const Index n = 100000;
  const auto values = veil::randn<double>({n}, gen).to_vector();
  double sum = 0, sum_sq = 0;
  for (double v : values) sum += v;
  const double mean = sum / n;
  for (double v : values) sum_sq += (v - mean) * (v - mean);
  const double stddev = std::sqrt(sum_sq / (n - 1));
  CHECK(std::abs(mean) < 0.016);
  CHECK(std::abs(stddev - 1.0) < 0.011);
  // Tails: P(|z| > 1) = 0.3173; the count's standard error is sqrt(n p (1-p)) / n = 0.0015.
  Index beyond_one = 0;
  for (double v : values) beyond_one += std::abs(v) > 1.0;
  CHECK(std::abs(static_cast<double>(beyond_one) / n - 0.3173) < 0.0075);
  // mean and stddev arguments shift and scale.
  veil::Generator again(2024);
  const auto shifted = veil::randn<double>({n}, again, 3.0, 2.0).to_vector();
  for (Index i = 0; i < n; i += 997) CHECK(shifted[i] == Approx(3.0 + 2.0 * values[i]).epsilon(1e-12));
}

TEST_CASE("rand stays at or above low and below high with mean in the middle", "[tensor][random]") {
  veil::Generator gen(3);
  const Index n = 100000;
  const auto values = veil::rand<double>({n}, gen, -2.0, 6.0).to_vector();
  double sum = 0;
  bool in_range = true;
  for (double v : values) {
    sum += v;
    in_range = in_range && v >= -2.0 && v < 6.0;
  }
  CHECK(in_range);
  // Uniform on [-2, 6): mean 2, standard deviation 8 / sqrt(12) = 2.31, standard error 0.0073.
  CHECK(std::abs(sum / n - 2.0) < 0.037);
  CHECK_THROWS_AS(veil::rand<double>({2}, gen, 1.0, 0.0), veil::ValueError);
}

TEST_CASE("rand never returns high even where rounding to T would reach it", "[tensor][random]") {
  // Counter 13059764 of seed 1 draws u = 0.99999999477 < 1, which rounds to 1.0f in float.
  veil::Generator gen(1);
  gen.reserve(13059764);
  const float value = veil::rand<float>({1}, gen).item();
  CHECK(value < 1.0f);
  CHECK(value == std::nextafter(1.0f, 0.0f));
  // Near 2^20 floats are 0.125 apart, so every u > 0.9375 would round to high.
  const auto coarse = veil::rand<float>({2000}, gen, 1048576.0f, 1048577.0f).to_vector();
  float largest = 0;
  for (float v : coarse) largest = std::max(largest, v);
  CHECK(largest == 1048576.875f);
  // The same in double near 2^40 (spacing 2^-12).
  const double low = 1099511627776.0;
  const auto wide = veil::rand<double>({50000}, gen, low, low + 1).to_vector();
  double widest = 0;
  for (double v : wide) widest = std::max(widest, v);
  CHECK(widest < low + 1);
  CHECK(widest == std::nextafter(low + 1, low));
}

TEST_CASE("randint hits every value from low up to but excluding high and nothing else", "[tensor][random]") {
  veil::Generator gen(11);
  const auto values = veil::randint<std::int64_t>({60000}, gen, -3, 3).to_vector();
  std::vector<Index> counts(6, 0);
  bool in_range = true;
  for (auto v : values) {
    in_range = in_range && v >= -3 && v < 3;
    if (v >= -3 && v < 3) ++counts[static_cast<std::size_t>(v + 3)];
  }
  CHECK(in_range);
  // Each count is Binomial(60000, 1/6): mean 10000, standard deviation 91.
  for (Index c : counts) CHECK(std::abs(c - 10000) < 460);
  CHECK_THROWS_AS(veil::randint<std::int64_t>({2}, gen, 5, 5), veil::ValueError);
}

TEST_CASE("random fills are identical with one thread and with two", "[tensor][random]") {
  // 100k elements: above the parallel grain, so two threads really split the fill.
  std::vector<float> serial_n, serial_u, parallel_n, parallel_u;
  {
    ThreadCountScope scope(1);
    veil::Generator gen(99);
    serial_n = veil::randn<float>({100000}, gen).to_vector();
    serial_u = veil::rand<float>({100000}, gen).to_vector();
  }
  {
    ThreadCountScope scope(2);
    veil::Generator gen(99);
    parallel_n = veil::randn<float>({100000}, gen).to_vector();
    parallel_u = veil::rand<float>({100000}, gen).to_vector();
  }
  CHECK(serial_n == parallel_n);
  CHECK(serial_u == parallel_u);
}

// ---- printing -----------------------------------------------------------------------------------

TEST_CASE("printing a 2x3 tensor shows the shape and nested rows", "[tensor][format]") {
  auto t = veil::from_vector<float>({1, 2.5f, 3, -4, 5, 6}, {2, 3});
  CHECK(printed(t) == "Tensor[2, 3]\n[[1, 2.5, 3],\n [-4, 5, 6]]");
  CHECK(printed(t.transpose(0, 1)) == "Tensor[3, 2]\n[[1, -4],\n [2.5, 5],\n [3, 6]]");
  t.set_requires_grad(true);
  CHECK(printed(veil::from_vector<double>({1, 2}).set_requires_grad(true)) == "Tensor[2] requires_grad\n[1, 2]");
}

TEST_CASE("printing bool and integer tensors shows true/false and integers", "[tensor][format]") {
  CHECK(printed(veil::from_vector<bool>({true, false, true})) == "Tensor[3]\n[true, false, true]");
  CHECK(printed(veil::scalar<bool>(true)) == "Tensor[]\ntrue");
  CHECK(printed(veil::arange<std::int64_t>(3)) == "Tensor[3]\n[0, 1, 2]");
}

TEST_CASE("printing 0-d and empty and undefined tensors", "[tensor][format]") {
  CHECK(printed(veil::scalar<float>(2.5f)) == "Tensor[]\n2.5");
  CHECK(printed(veil::zeros<float>({0, 3})) == "Tensor[0, 3]\n[]");
  CHECK(printed(Tensor<float>()) == "Tensor(undefined)");
}

TEST_CASE("printing elides the middle of dimensions longer than 7", "[tensor][format]") {
  CHECK(printed(veil::arange<std::int64_t>(7)) == "Tensor[7]\n[0, 1, 2, 3, 4, 5, 6]");
  CHECK(printed(veil::arange<std::int64_t>(10)) == "Tensor[10]\n[0, 1, 2, ..., 7, 8, 9]");
  CHECK(printed(veil::arange<std::int64_t>(16).reshape({8, 2})) ==
        "Tensor[8, 2]\n[[0, 1],\n [2, 3],\n [4, 5],\n ...,\n [10, 11],\n [12, 13],\n [14, 15]]");
  CHECK(printed(veil::arange<std::int64_t>(8).reshape({2, 2, 2})) ==
        "Tensor[2, 2, 2]\n[[[0, 1],\n  [2, 3]],\n [[4, 5],\n  [6, 7]]]");
}

// ---- views --------------------------------------------------------------------------------------

TEST_CASE("reshape of a contiguous tensor is a view sharing storage", "[tensor][views]") {
  auto x = iota({2, 6});
  auto y = x.reshape({3, -1});
  CHECK(y.shape() == Shape{3, 4});
  CHECK(y.shares_storage_with(x));
  CHECK(y.is_contiguous());
  y.data()[5] = 100.0f;
  CHECK(x.at({0, 5}) == 100.0f);
  CHECK_THROWS_AS(x.reshape({5, -1}), veil::ShapeError);
  CHECK_THROWS_AS(x.reshape({-1, -1}), veil::ShapeError);
}

TEST_CASE("reshape of a transposed tensor copies instead of aliasing", "[tensor][views]") {
  auto x = iota({2, 3});
  auto t = x.transpose(0, 1);
  CHECK_FALSE(t.is_contiguous());
  auto r = t.reshape({6});
  CHECK_FALSE(r.shares_storage_with(x));
  CHECK(r.to_vector() == std::vector<float>{0, 3, 1, 4, 2, 5});
  CHECK_THROWS_AS(veil::view(t, {6}), veil::ShapeError);
}

TEST_CASE("permute and transpose reorder strides and share storage", "[tensor][views]") {
  auto x = iota({2, 3, 4});
  auto p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(p.shares_storage_with(x));
  CHECK(p.at({3, 1, 2}) == x.at({1, 2, 3}));
  CHECK(p.at({3, 1, 2}) == 23.0f);
  auto t = x.transpose(-1, 0);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK(t.strides() == Shape{1, 4, 12});
  CHECK(t.to_vector()[1] == 12.0f);
  CHECK_THROWS_AS(x.permute({0, 1}), veil::ShapeError);
  CHECK_THROWS_AS(x.permute({0, 1, 1}), veil::ShapeError);
}

TEST_CASE("slice with a step is a strided view", "[tensor][views]") {
  auto x = iota({2, 6});
  auto s = veil::slice(x, 1, 1, 6, 2);
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.strides() == Shape{6, 2});
  CHECK(s.offset() == 1);
  CHECK(s.shares_storage_with(x));
  CHECK(s.to_vector() == std::vector<float>{1, 3, 5, 7, 9, 11});
  CHECK(veil::slice(x, -1, -2, 100).to_vector() == std::vector<float>{4, 5, 10, 11});
  CHECK(veil::slice(x, 0, 1, 2).to_vector() == std::vector<float>{6, 7, 8, 9, 10, 11});
  CHECK(veil::slice(x, 1, 4, 2).numel() == 0);
  s.data()[s.strides()[0]] = -1.0f;  // element [1, 0] of the view
  CHECK(x.at({1, 1}) == -1.0f);
}

TEST_CASE("narrow takes a length from a start as a view and checks bounds", "[tensor][views]") {
  auto x = iota({3, 4});
  auto n = veil::narrow(x, 0, 1, 2);
  CHECK(n.shape() == Shape{2, 4});
  CHECK(n.offset() == 4);
  CHECK(n.shares_storage_with(x));
  CHECK(n.to_vector() == std::vector<float>{4, 5, 6, 7, 8, 9, 10, 11});
  CHECK_THROWS_AS(veil::narrow(x, 0, 2, 2), veil::ValueError);
}

TEST_CASE("expand broadcasts with stride 0 and shares storage", "[tensor][views]") {
  auto x = veil::from_vector<float>({1, 2, 3}, {3, 1});
  auto e = veil::expand(x, {2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.shares_storage_with(x));
  CHECK_FALSE(e.is_contiguous());
  CHECK(e.at({1, 2, 3}) == 3.0f);
  auto c = e.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.shares_storage_with(x));
  CHECK(c.to_vector() == std::vector<float>{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
  CHECK(veil::expand(x, {3, 2}).to_vector() == std::vector<float>{1, 1, 2, 2, 3, 3});
  CHECK_THROWS_AS(veil::expand(x, {2, 2}), veil::ShapeError);
  CHECK_THROWS_AS(veil::expand(x, {3}), veil::ShapeError);  // expand never drops dimensions
}

TEST_CASE("squeeze and unsqueeze of a contiguous tensor are views", "[tensor][views]") {
  auto x = iota({2, 3});
  auto u = veil::unsqueeze(x, 1);
  CHECK(u.shape() == Shape{2, 1, 3});
  CHECK(u.shares_storage_with(x));
  CHECK(veil::unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  auto s = veil::squeeze(u, 1);
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.shares_storage_with(x));
  CHECK(s.to_vector() == x.to_vector());
  CHECK_THROWS_AS(veil::squeeze(x, 0), veil::ShapeError);
}

TEST_CASE("contiguous copies a non-contiguous view and returns a contiguous tensor as is", "[tensor][views]") {
  auto x = iota({3, 4});
  CHECK(x.contiguous().impl_ptr() == x.impl_ptr());
  auto v = veil::slice(x.transpose(0, 1), 0, 1, 4, 2);  // rows 1 and 3 of the transpose
  CHECK_FALSE(v.is_contiguous());
  auto c = v.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.shares_storage_with(x));
  CHECK(c.shape() == Shape{2, 3});
  CHECK(c.to_vector() == std::vector<float>{1, 5, 9, 3, 7, 11});
  c.data()[0] = 50.0f;  // a copy: the source is untouched
  CHECK(x.at({0, 1}) == 1.0f);
}

TEST_CASE("is_contiguous ignores size-1 dimensions whatever their stride", "[tensor][views]") {
  auto x = iota({3, 1});
  CHECK(x.transpose(0, 1).is_contiguous());
  CHECK(veil::slice(iota({4}), 0, 0, 4, 2).is_contiguous() == false);
  CHECK(veil::slice(iota({4}), 0, 0, 1, 3).is_contiguous());
}

TEST_CASE("storage is 64-byte aligned for every element type and size", "[tensor][storage]") {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; };
  for (Index n : {1, 3, 15, 16, 17, 1000}) {
    INFO("numel " << n);
    CHECK(aligned(veil::zeros<float>({n}).data()));
    CHECK(aligned(veil::zeros<double>({n}).data()));
    CHECK(aligned(veil::zeros<std::int64_t>({n}).data()));
    CHECK(aligned(veil::zeros<bool>({n}).data()));
  }
  CHECK(veil::Storage<float>(0).data() == nullptr);
  CHECK(veil::Storage<float>(5).size() == 5);
}

TEST_CASE("A tensor with no elements is contiguous, so view and contiguous accept a fresh empty tensor",
          "[tensor][layout]") {
  // empty() gives an extent-0 dimension stride 1, which a product of extents (0) would not expect.
  const auto fresh = veil::zeros<float>({3, 0});
  REQUIRE(fresh.is_contiguous());
  REQUIRE(veil::view(fresh, {0, 3}).shape() == veil::Shape{0, 3});
  const auto transposed = veil::transpose(veil::zeros<float>({0, 3}), 0, 1);
  REQUIRE(transposed.is_contiguous());
  REQUIRE(veil::contiguous(transposed).is_contiguous());
  // A view into an empty storage at a non-zero offset: elementwise ops take the contiguous path.
  const auto offset_view = veil::slice(veil::zeros<float>({10, 0}), 0, 3, 5);
  REQUIRE(offset_view.offset() == 3);
  REQUIRE((offset_view + offset_view).shape() == veil::Shape{2, 0});
}

#include <veil/veil.hpp>

#include <catch2/catch.hpp>

#include "support/threads.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <thread>
#include <vector>

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil_test::run_together;

namespace {

Tensor<double> leaf(const std::vector<double>& values, const Shape& shape = {}) {
  return veil::from_vector<double>(values, shape).set_requires_grad(true);
}

}  // namespace

TEST_CASE("gradients accumulate across two backward calls", "[autograd][engine]") {
  auto x = leaf({0.5, -1.5, 3.0});
  for (int pass = 0; pass < 2; ++pass) {
    auto y = x * x;
    y.backward(veil::ones<double>({3}));
  }
  CHECK(x.grad().to_vector() == std::vector<double>{2.0, -6.0, 12.0});  // 2 * (2x)
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  (x * 3.0).backward(veil::ones<double>({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{3.0, 3.0, 3.0});
}

TEST_CASE("a leaf used several times gets the sum of its gradients: y = x^2 + x gives 2x + 1", "[autograd][engine]") {
  auto x = leaf({0.5, -1.5, 3.0, 0.0});
  auto y = x * x + x;
  CHECK(y.to_vector() == std::vector<double>{0.75, 0.75, 12.0, 0.0});
  y.backward(veil::ones<double>({4}));
  CHECK(x.grad().to_vector() == std::vector<double>{2.0, -2.0, 7.0, 1.0});
}

TEST_CASE("a diamond graph sums the gradients of both branches at the shared node", "[autograd][engine]") {
  // a = 3x; d = a*a * (a + 1) = a^3 + a^2; dd/dx = 3 (3a^2 + 2a).
  auto x = leaf({1.0, 0.5, -2.0});
  auto a = x * 3.0;
  auto d = (a * a) * (a + 1.0);
  d.backward(veil::ones<double>({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{99.0, 29.25, 288.0});
  // The intermediate a is not a leaf: no gradient is kept there.
  CHECK_FALSE(a.is_leaf());
  CHECK_FALSE(a.grad().defined());
}

TEST_CASE("two leaves meeting in one product each get the other as gradient", "[autograd][engine]") {
  auto a = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  auto b = leaf({10, 20, 30}, {3});
  auto y = a * b;
  y.backward(veil::full<double>({2, 3}, 2.0));
  CHECK(a.grad().to_vector() == std::vector<double>{20, 40, 60, 20, 40, 60});
  CHECK(b.grad().to_vector() == std::vector<double>{10, 14, 18});
  CHECK(b.grad().shape() == Shape{3});
}

TEST_CASE("backward without grad_output on a tensor with several elements is a ShapeError naming the shape",
          "[autograd][engine]") {
  auto x = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  auto y = x * 2.0;
  CHECK_THROWS_AS(y.backward(), veil::ShapeError);
  CHECK_THROWS_WITH(y.backward(), Catch::Contains("[2, 3]"));
  CHECK_FALSE(x.grad().defined());
  // A one-element tensor of any rank backpropagates with gradient 1.
  auto s = (leaf({4.0}, {1, 1}) * 2.0);
  CHECK_NOTHROW(s.backward());
}

TEST_CASE("backward with a grad_output of the wrong shape is a ShapeError naming both shapes", "[autograd][engine]") {
  auto x = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  auto y = x * 2.0;
  CHECK_THROWS_AS(y.backward(veil::ones<double>({3})), veil::ShapeError);
  CHECK_THROWS_WITH(y.backward(veil::ones<double>({3, 2})),
                    Catch::Contains("[3, 2]") && Catch::Contains("[2, 3]"));
  // The failed calls left the graph usable.
  y.backward(veil::ones<double>({2, 3}));
  CHECK(x.grad().to_vector() == std::vector<double>(6, 2.0));
}

TEST_CASE("backward on a tensor that does not require grad is an AutogradError", "[autograd][engine]") {
  auto x = veil::from_vector<double>({1, 2});
  CHECK_THROWS_AS((x * 2.0).backward(veil::ones<double>({2})), veil::AutogradError);
  CHECK_THROWS_AS(veil::scalar<double>(1.0).backward(), veil::AutogradError);
}

TEST_CASE("backward on a leaf accumulates grad_output into it", "[autograd][engine]") {
  auto x = leaf({1, 2});
  x.backward(veil::from_vector<double>({0.5, -1}));
  CHECK(x.grad().to_vector() == std::vector<double>{0.5, -1});
}

TEST_CASE("a second backward without retain_graph is an AutogradError that mentions retain_graph",
          "[autograd][engine]") {
  auto x = leaf({1.0, 2.0});
  auto y = veil::exp(x * x);
  y.backward(veil::ones<double>({2}));
  const auto first = x.grad().to_vector();
  CHECK_THROWS_AS(y.backward(veil::ones<double>({2})), veil::AutogradError);
  CHECK_THROWS_WITH(y.backward(veil::ones<double>({2})), Catch::Contains("retain_graph"));
  CHECK(x.grad().to_vector() == first);  // the failed call added nothing
  // A graph sharing a freed node is freed too.
  auto z = x * 2.0;
  auto branch_a = z + 1.0;
  auto branch_b = z + 2.0;
  branch_a.backward(veil::ones<double>({2}));
  CHECK_THROWS_WITH(branch_b.backward(veil::ones<double>({2})), Catch::Contains("retain_graph"));
}

TEST_CASE("backward twice with retain_graph gives bit-identical gradients", "[autograd][engine]") {
  veil::Generator gen(3);
  auto x = veil::randn<double>({5, 7}, gen).set_requires_grad(true);
  auto w = veil::randn<double>({7}, gen).set_requires_grad(true);
  auto y = veil::tanh(x * w) * veil::exp(x) + x / (w * w + 1.0);
  const auto upstream = veil::randn<double>({5, 7}, gen);
  y.backward(upstream, /*retain_graph=*/true);
  const auto gx = x.grad().to_vector();
  const auto gw = w.grad().to_vector();
  x.zero_grad();
  w.zero_grad();
  y.backward(upstream, /*retain_graph=*/true);
  CHECK(x.grad().to_vector() == gx);
  CHECK(w.grad().to_vector() == gw);
  x.zero_grad();
  w.zero_grad();
  y.backward(upstream);  // the last one may free the graph
  CHECK(x.grad().to_vector() == gx);
  CHECK(w.grad().to_vector() == gw);
}

TEST_CASE("NoGradGuard stops recording and restores the previous mode on scope exit", "[autograd][grad_mode]") {
  auto x = leaf({1.0, 2.0});
  CHECK(veil::is_grad_enabled());
  {
    veil::NoGradGuard no_grad;
    CHECK_FALSE(veil::is_grad_enabled());
    auto y = x * x;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(y.to_vector() == std::vector<double>{1.0, 4.0});
    CHECK_THROWS_AS(y.backward(veil::ones<double>({2})), veil::AutogradError);
    {
      veil::NoGradGuard nested;
      CHECK_FALSE(veil::is_grad_enabled());
    }
    CHECK_FALSE(veil::is_grad_enabled());  // the inner guard restores "disabled", not "enabled"
  }
  CHECK(veil::is_grad_enabled());
  auto z = x * x;
  CHECK(z.requires_grad());
  CHECK(z.grad_fn() != nullptr);
}

TEST_CASE("NoGradGuard is per thread: another thread still records while this one holds a guard",
          "[autograd][grad_mode][threads]") {
  auto x = leaf({1.5, -2.0});
  veil::NoGradGuard no_grad;
  bool other_enabled = false, other_recorded = false;
  std::vector<double> other_grad;
  std::thread other([&] {
    other_enabled = veil::is_grad_enabled();
    auto y = x * x;
    other_recorded = y.requires_grad() && y.grad_fn() != nullptr;
    y.backward(veil::ones<double>({2}));
  });
  other.join();
  CHECK(other_enabled);
  CHECK(other_recorded);
  CHECK(x.grad().to_vector() == std::vector<double>{3.0, -4.0});
  CHECK_FALSE(veil::is_grad_enabled());
  CHECK_FALSE((x * x).requires_grad());
}

TEST_CASE("NoGradGuard held by half of 10 concurrent threads stops recording in exactly those threads",
          "[autograd][grad_mode][threads]") {
  constexpr int threads = 10, steps = 50;
  auto x = leaf({1.5, -2.0, 0.25});
  // Per thread: steps recorded (ops that got a grad_fn) and grad mode seen after the guard ended.
  std::vector<int> recorded(threads, -1);
  std::vector<char> enabled_after(threads, 0);
  run_together(threads, [&](int t) {
    int count = 0;
    {
      std::optional<veil::NoGradGuard> guard;
      if (t % 2 == 0) guard.emplace();
      for (int step = 0; step < steps; ++step) {
        auto y = x * x;
        if (y.requires_grad() && y.grad_fn() != nullptr) ++count;
        std::this_thread::yield();  // interleave the guarded and unguarded threads
      }
    }
    recorded[static_cast<std::size_t>(t)] = count;
    enabled_after[static_cast<std::size_t>(t)] = veil::is_grad_enabled() ? 1 : 0;
  });
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(recorded[static_cast<std::size_t>(t)] == (t % 2 == 0 ? 0 : steps));
    CHECK(enabled_after[static_cast<std::size_t>(t)] == 1);
  }
  CHECK(veil::is_grad_enabled());
}

TEST_CASE("detach cuts history and shares storage", "[autograd][engine]") {
  auto x = leaf({1.0, 2.0, 3.0});
  auto y = x * x;
  auto d = y.detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  CHECK(d.grad_fn() == nullptr);
  CHECK(d.shares_storage_with(y));
  CHECK(d.shape() == y.shape());
  d.data()[1] = 40.0;
  CHECK(y.to_vector() == std::vector<double>{1.0, 40.0, 9.0});
  // z = x * d: the gradient reaches x through the recorded edge only, d counts as a constant.
  auto z = x * d;
  z.backward(veil::ones<double>({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{1.0, 40.0, 9.0});
  // A detached view keeps its geometry.
  auto t = x.reshape({3, 1}).transpose(0, 1).detach();
  CHECK(t.shape() == Shape{1, 3});
  CHECK(t.shares_storage_with(x));
}

TEST_CASE("set_requires_grad rejects integer tensors and non-leaf tensors", "[autograd][engine]") {
  auto ints = veil::zeros<std::int64_t>({3});
  CHECK_THROWS_AS(ints.set_requires_grad(true), veil::ValueError);
  CHECK_NOTHROW(ints.set_requires_grad(false));
  CHECK_FALSE(ints.requires_grad());
  auto bools = veil::zeros<bool>({3});
  CHECK_THROWS_AS(bools.set_requires_grad(), veil::ValueError);
  auto x = leaf({1.0});
  auto y = x * 2.0;
  CHECK_THROWS_AS(y.set_requires_grad(true), veil::AutogradError);
  CHECK_THROWS_WITH(y.set_requires_grad(false), Catch::Contains("detach"));
  CHECK(y.requires_grad());
  auto f = veil::zeros<float>({2});
  f.set_requires_grad();
  CHECK(f.requires_grad());
  f.set_requires_grad(false);
  CHECK_FALSE(f.requires_grad());
}

TEST_CASE("a chain of 200000 ops builds and backpropagates and is destroyed without overflowing the stack",
          "[autograd][engine][slow]") {
  constexpr int length = 200000;
  const auto chain = [](const Tensor<double>& x) {
    Tensor<double> y = x;
    for (int i = 0; i < length; ++i) y = i % 2 == 0 ? y * 2.0 : y * 0.5;  // exact: y == x throughout
    return y;
  };
  SECTION("backward frees the graph") {
    auto x = leaf({1.25, -3.0});
    {
      auto y = chain(x);
      CHECK(y.to_vector() == std::vector<double>{1.25, -3.0});
      y.backward(veil::ones<double>({2}));
    }
    CHECK(x.grad().to_vector() == std::vector<double>{1.0, 1.0});
  }
  SECTION("backward with retain_graph keeps the graph, which is then destroyed") {
    auto x = leaf({1.25, -3.0});
    {
      auto y = chain(x);
      y.backward(veil::ones<double>({2}), /*retain_graph=*/true);
      y.backward(veil::ones<double>({2}), /*retain_graph=*/true);
    }
    CHECK(x.grad().to_vector() == std::vector<double>{2.0, 2.0});
  }
  SECTION("the graph is destroyed without any backward") {
    auto x = leaf({1.25, -3.0});
    { auto y = chain(x); }
    CHECK_FALSE(x.grad().defined());
    CHECK(x.impl_ptr().use_count() == 1);  // nothing of the graph still holds the leaf
  }
}

TEST_CASE("10 threads doing independent forward and backward match the single-threaded result",
          "[autograd][threads]") {
  constexpr int threads = 10;
  const auto compute = [](int t) {
    veil::Generator gen(static_cast<std::uint64_t>(100 + t));
    auto x = veil::randn<double>({4, 6}, gen).set_requires_grad(true);
    auto w = veil::randn<double>({6}, gen).set_requires_grad(true);
    auto y = veil::exp(x * w) * x + w;
    y.backward(veil::ones<double>({4, 6}));
    auto out = y.to_vector();
    auto gx = x.grad().to_vector();
    auto gw = w.grad().to_vector();
    out.insert(out.end(), gx.begin(), gx.end());
    out.insert(out.end(), gw.begin(), gw.end());
    return out;
  };
  std::vector<std::vector<double>> expected, got(threads);
  for (int t = 0; t < threads; ++t) expected.push_back(compute(t));
  run_together(threads, [&](int t) { got[static_cast<std::size_t>(t)] = compute(t); });
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(got[static_cast<std::size_t>(t)] == expected[static_cast<std::size_t>(t)]);
  }
}

TEST_CASE("10 threads backpropagating into one shared leaf give exactly 10 times the single gradient",
          "[autograd][threads]") {
  constexpr int threads = 10;
  // Dyadic values: 2x + 1 and its multiples up to 10 are exact, so the sum order cannot matter.
  auto x = leaf({0.5, -1.25, 3.0, 0.0, 7.75, -0.125});
  const auto step = [&x] {
    auto y = x * x + x;  // each thread builds its own graph and frees it (retain_graph = false)
    y.backward(veil::ones<double>({6}));
  };
  step();
  const auto single = x.grad().to_vector();
  CHECK(single == std::vector<double>{2.0, -1.5, 7.0, 1.0, 16.5, 0.75});
  for (int round = 0; round < 5; ++round) {
    x.zero_grad();
    run_together(threads, [&](int) { step(); });
    std::vector<double> ten;
    for (double g : single) ten.push_back(threads * g);
    INFO("round " << round);
    CHECK(x.grad().to_vector() == ten);
  }
}

TEST_CASE("10 threads multiplying by one shared float weight accumulate exactly 10 times its gradient",
          "[autograd][threads]") {
  // loss = Σ relu(x W) ∘ c with small integers in x, W and c: dL/dW = xᵀ (1[xW > 0] ∘ c) has
  // integer entries far below 2^24 / 10, so every partial sum is exact in float whatever order
  // the threads' accumulations land in. W has 64 × 96 entries: each accumulation is a loop long
  // enough for a lost update to show.
  constexpr int threads = 10;
  veil::Generator gen(17);
  const auto small_integers = [&gen](const Shape& shape) {
    std::vector<float> values(static_cast<std::size_t>(veil::numel_of(shape)));
    for (float& value : values) value = std::floor(static_cast<float>(gen.uniform()) * 7.0f) - 3.0f;  // -3 ... 3
    return veil::from_vector<float>(values, shape);
  };
  auto weight = small_integers({64, 96}).set_requires_grad(true);
  const auto x = small_integers({32, 64}), c = small_integers({32, 96});
  const auto step = [&] {
    const veil_test::ThreadCountScope one_thread(1);
    veil::sum(veil::relu(veil::matmul(x, weight)) * c).backward();
  };
  step();
  const auto single = weight.grad().to_vector();
  REQUIRE(std::any_of(single.begin(), single.end(), [](float g) { return g != 0.0f; }));
  for (int round = 0; round < 3; ++round) {
    weight.zero_grad();
    run_together(threads, [&](int) { step(); });
    std::vector<float> expected;
    for (float g : single) expected.push_back(threads * g);
    INFO("round " << round);
    CHECK(weight.grad().to_vector() == expected);
  }
}

TEST_CASE("a custom op whose backward returns the wrong number or shape of gradients is an AutogradError",
          "[autograd][engine]") {
  auto x = leaf({1.0, 2.0});
  const Tensor<double>* inputs[] = {&x};
  auto too_few = veil::autograd::record<double>("too_few", veil::zeros<double>({2}), inputs, 1,
                                                [](const Tensor<double>&) { return std::vector<Tensor<double>>{}; });
  CHECK_THROWS_WITH(too_few.backward(veil::ones<double>({2})), Catch::Contains("too_few"));
  auto wrong_shape = veil::autograd::record<double>("wrong_shape", veil::zeros<double>({2}), inputs, 1,
                                                    [](const Tensor<double>&) {
                                                      return std::vector<Tensor<double>>{veil::zeros<double>({3})};
                                                    });
  CHECK_THROWS_AS(wrong_shape.backward(veil::ones<double>({2})), veil::AutogradError);
  CHECK_THROWS_WITH(wrong_shape.backward(veil::ones<double>({2})),
                    Catch::Contains("wrong_shape") && Catch::Contains("[3]"));
}

TEST_CASE("a backward that throws midway leaves no stale gradient for the next backward", "[autograd][engine]") {
  // r = p + t with t = flaky(p): r's backward hands a gradient to p's node, then flaky throws
  // before p's node runs. The retried backward must not add the gradient left waiting at p.
  auto x = leaf({1.0, 2.0});
  auto p = x * 3.0;
  bool fail_once = true;
  const Tensor<double>* inputs[] = {&p};
  auto t = veil::autograd::record<double>("flaky", p.detach() * 1.0, inputs, 1, [&fail_once](const Tensor<double>& g) {
    if (fail_once) {
      fail_once = false;
      throw veil::ValueError("flaky: first call fails");
    }
    return std::vector<Tensor<double>>{g};
  });
  auto r = p + t;
  CHECK_THROWS_AS(r.backward(veil::ones<double>({2})), veil::ValueError);
  CHECK_FALSE(x.grad().defined());
  r.backward(veil::ones<double>({2}));
  CHECK(x.grad().to_vector() == std::vector<double>{6.0, 6.0});  // dr/dx = 3 * (1 + 1)
}

TEST_CASE("record attaches history only when grad mode is on and an input requires grad", "[autograd][engine]") {
  auto x = leaf({1.0});
  auto c = veil::from_vector<double>({2.0});
  const auto identity = [](const Tensor<double>& g) { return std::vector<Tensor<double>>{g, g}; };
  auto with = veil::autograd::record<double>("op", veil::zeros<double>({1}), {&x, &c}, identity);
  CHECK(with.requires_grad());
  REQUIRE(with.grad_fn() != nullptr);
  CHECK(std::string(with.grad_fn()->name()) == "op");
  CHECK(with.grad_fn()->needs_input_grad(0));
  CHECK_FALSE(with.grad_fn()->needs_input_grad(1));
  auto without = veil::autograd::record<double>("op", veil::zeros<double>({1}), {&c, &c}, identity);
  CHECK_FALSE(without.requires_grad());
  veil::NoGradGuard no_grad;
  auto guarded = veil::autograd::record<double>("op", veil::zeros<double>({1}), {&x, &c}, identity);
  CHECK_FALSE(guarded.requires_grad());
}

// Fuzzes shape, stride and broadcast arithmetic: views (reshape, view, transpose, permute, slice,
// narrow, expand, unsqueeze, squeeze, contiguous) chained on a tensor of rank <= 5 and extents
// <= 10, then the broadcasting binary ops (+ - * /) and their gradients against a second tensor.
//
// Every result is checked against a model written here from the documented semantics: a plain
// row-major vector of values and naive index loops, no strides. The model also decides which
// calls are invalid; veil must then throw a veil::Error (and may only throw one then), so a call
// that veil accepts but should refuse is a finding too. Values are small integers, so sums and
// products are exact and results compare bit for bit.
#include <veil/veil.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using veil::Index;
using veil::Shape;
using veil::Tensor;
using veil_fuzz::fuzz_failure;

constexpr Index max_extent = 10;
constexpr Index max_elements = 1024;  // keeps each input cheap; rank 5 x 10 would be 100,000

// ---- the model ----------------------------------------------------------------------------------

struct Model {
  Shape shape;
  std::vector<float> values;  // row-major
};

Index count_of(const Shape& shape) {
  Index count = 1;
  for (Index extent : shape) count *= extent;
  return count;
}

/// Calls visit(index) for every multi-index of `shape` in row-major order (an odometer).
template <class Visit>
void for_each_index(const Shape& shape, Visit&& visit) {
  const Index count = count_of(shape);
  Shape index(shape.size(), 0);
  for (Index e = 0; e < count; ++e) {
    visit(static_cast<const Shape&>(index));
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
}

/// Position of `index` in a row-major array of `shape`.
Index position_of(const Shape& index, const Shape& shape) {
  Index position = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) position = position * shape[d] + index[d];
  return position;
}

/// out[index] = in[source(index, from)] for every multi-index of `shape`; `source` fills `from`.
template <class Source>
Model gather(const Model& in, const Shape& shape, Source&& source) {
  Model out{shape, {}};
  out.values.reserve(static_cast<std::size_t>(count_of(shape)));
  Shape from(in.shape.size(), 0);
  for_each_index(shape, [&](const Shape& index) {
    source(index, from);
    out.values.push_back(in.values[static_cast<std::size_t>(position_of(from, in.shape))]);
  });
  return out;
}

/// PyTorch's dimension wrapping: [-rank, rank - 1], and for a 0-d tensor [-1, 0].
std::optional<Index> wrapped(Index dim, Index rank) {
  const Index span = std::max<Index>(rank, 1);
  if (dim < -span || dim >= span) return std::nullopt;
  return dim < 0 ? dim + span : dim;
}

std::optional<Shape> broadcast(const Shape& a, const Shape& b) {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    const Index ea = i + a.size() < rank ? 1 : a[i + a.size() - rank];
    const Index eb = i + b.size() < rank ? 1 : b[i + b.size() - rank];
    if (ea != eb && ea != 1 && eb != 1) return std::nullopt;
    out[i] = ea == 1 ? eb : ea;
  }
  return out;
}

/// Position in `m` (broadcast to `shape`) of the element at `index` of `shape`.
Index broadcast_position(const Model& m, const Shape& shape, const Shape& index) {
  Index position = 0;
  const std::size_t lead = shape.size() - m.shape.size();
  for (std::size_t d = 0; d < m.shape.size(); ++d) position = position * m.shape[d] + (m.shape[d] == 1 ? 0 : index[lead + d]);
  return position;
}

/// Model of a broadcasting binary op.
Model binary(const Model& a, const Model& b, const Shape& shape, float (*op)(float, float)) {
  Model out{shape, {}};
  out.values.reserve(static_cast<std::size_t>(count_of(shape)));
  for_each_index(shape, [&](const Shape& index) {
    out.values.push_back(op(a.values[static_cast<std::size_t>(broadcast_position(a, shape, index))],
                            b.values[static_cast<std::size_t>(broadcast_position(b, shape, index))]));
  });
  return out;
}

/// Sums `grad` (of `shape`) down to `target`, the shape of an operand broadcast to it.
Model reduce_to(const Model& grad, const Shape& target) {
  Model out{target, std::vector<float>(static_cast<std::size_t>(count_of(target)), 0.0f)};
  std::size_t e = 0;
  for_each_index(grad.shape, [&](const Shape& index) {
    out.values[static_cast<std::size_t>(broadcast_position(out, grad.shape, index))] += grad.values[e++];
  });
  return out;
}

// ---- checks -------------------------------------------------------------------------------------

/// Equal (with the sign of zero unless `any_zero_sign`), or both NaN.
bool same_value(float a, float b, bool any_zero_sign) {
  if (a == b) return any_zero_sign || std::signbit(a) == std::signbit(b);
  return std::isnan(a) && std::isnan(b);
}

void check_equal(const Tensor<float>& actual, const Model& expected, const std::string& what, bool any_zero_sign = false) {
  VEIL_FUZZ_CHECK(actual.shape() == expected.shape, what, ": shape ", veil::to_string(actual.shape()), ", expected ",
                  veil::to_string(expected.shape));
  VEIL_FUZZ_CHECK(actual.numel() == count_of(expected.shape), what, ": numel ", actual.numel());
  const std::vector<float> values = actual.to_vector();
  for (std::size_t e = 0; e < values.size(); ++e)
    VEIL_FUZZ_CHECK(same_value(values[e], expected.values[e], any_zero_sign), what, ": element ", e, " is ", values[e], ", expected ",
                    expected.values[e]);
}

/// Runs `op` on veil; `expected` is the model's answer (nothing when the call is invalid).
template <class Op>
std::optional<Tensor<float>> apply(const std::string& what, const std::optional<Model>& expected, Op&& op) {
  std::optional<Tensor<float>> result;
  try {
    result = op();
  } catch (const veil::Error& error) {
    VEIL_FUZZ_CHECK(!expected, what, ": threw \"", error.what(), "\" on a valid call");
    return std::nullopt;
  } catch (const std::exception& error) {
    fuzz_failure(what, ": threw something other than a veil::Error: ", error.what());
  }
  VEIL_FUZZ_CHECK(expected.has_value(), what, ": accepted an invalid call, giving shape ", veil::to_string(result->shape()));
  check_equal(*result, *expected, what);
  return result;
}

// ---- inputs ---------------------------------------------------------------------------------------

Shape draw_shape(FuzzedDataProvider& in, Index max_rank) {
  Shape shape(static_cast<std::size_t>(in.ConsumeIntegralInRange<Index>(0, max_rank)));
  for (auto& extent : shape) extent = in.ConsumeIntegralInRange<Index>(0, max_extent);
  while (count_of(shape) > max_elements) *std::max_element(shape.begin(), shape.end()) /= 2;
  return shape;
}

/// A tensor holding `model`, contiguous or (when the input says so) a strided view of a
/// permuted copy, so that the ops also read non-contiguous layouts.
Tensor<float> realise(const Model& model, bool strided) {
  if (model.shape.empty()) return veil::scalar(model.values[0]);
  Tensor<float> plain = veil::from_vector(model.values, model.shape);
  if (!strided || model.shape.size() < 2) return plain;
  Shape reversed(model.shape.size());
  for (std::size_t d = 0; d < reversed.size(); ++d) reversed[d] = static_cast<Index>(reversed.size() - 1 - d);
  return veil::permute(veil::permute(plain, reversed).contiguous(), reversed);
}

std::string shape_text(const Shape& shape) { return veil::to_string(shape); }

// ---- one view op ----------------------------------------------------------------------------------

/// Applies one fuzzed view op to (x, model); returns false when the call was (rightly) refused.
bool view_step(FuzzedDataProvider& in, Tensor<float>& x, Model& model) {
  const Index rank = static_cast<Index>(model.shape.size());
  const Index count = count_of(model.shape);
  const auto dim_arg = [&in](Index limit) { return in.ConsumeIntegralInRange<Index>(-limit - 1, limit); };
  std::optional<Model> expected;
  std::optional<Tensor<float>> result;
  switch (in.ConsumeIntegralInRange(0, 9)) {
    case 0:
    case 1: {  // reshape / view: one extent may be -1
      const bool as_view = in.ConsumeBool();
      Shape target(static_cast<std::size_t>(in.ConsumeIntegralInRange<Index>(0, 5)));
      for (auto& extent : target) extent = in.ConsumeIntegralInRange<Index>(0, 12) == 12 ? -1 : in.ConsumeIntegralInRange<Index>(0, max_extent);
      if (!target.empty() && in.ConsumeIntegralInRange(0, 15) == 0) target[0] = -2;
      Shape resolved = target;
      Index known = 1, holes = 0, bad = 0;
      for (auto& extent : resolved) {
        if (extent == -1) ++holes;
        else if (extent < 0) ++bad;
        else known *= extent;
      }
      bool valid = holes <= 1 && bad == 0 && (!as_view || x.is_contiguous());
      if (valid && holes == 1) {
        valid = known != 0 && count % known == 0;
        if (valid) *std::find(resolved.begin(), resolved.end(), Index{-1}) = count / known;
      }
      valid = valid && count_of(resolved) == count;
      if (valid) expected = Model{resolved, model.values};
      result = apply((as_view ? "view(" : "reshape(") + shape_text(model.shape) + " -> " + shape_text(target) + ")", expected,
                     [&] { return as_view ? veil::view(x, target) : veil::reshape(x, target); });
      break;
    }
    case 2: {  // transpose
      const Index d0 = dim_arg(rank), d1 = dim_arg(rank);
      const auto w0 = wrapped(d0, rank), w1 = wrapped(d1, rank);
      if (w0 && w1) {
        Shape shape = model.shape;
        if (rank > 0) std::swap(shape[*w0], shape[*w1]);
        expected = gather(model, shape, [&](const Shape& index, Shape& from) {
          from = index;
          if (!from.empty()) std::swap(from[*w0], from[*w1]);
        });
      }
      result = apply(veil::detail::concat("transpose(", shape_text(model.shape), ", ", d0, ", ", d1, ")"), expected,
                     [&] { return veil::transpose(x, d0, d1); });
      break;
    }
    case 3: {  // permute
      Shape order(static_cast<std::size_t>(std::max<Index>(0, rank + in.ConsumeIntegralInRange<Index>(-1, 1))));
      for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = in.ConsumeIntegralInRange(0, 7) == 0 ? dim_arg(rank) : static_cast<Index>(i);
      if (order.size() > 1 && in.ConsumeBool()) std::swap(order[0], order[order.size() - 1]);
      bool valid = static_cast<Index>(order.size()) == rank;
      Shape axes(order.size());
      std::vector<bool> seen(order.size(), false);
      for (std::size_t i = 0; valid && i < order.size(); ++i) {
        const auto w = wrapped(order[i], rank);
        valid = w.has_value() && !seen[*w];
        if (valid) seen[*w] = true, axes[i] = *w;
      }
      if (valid) {
        Shape shape(axes.size());
        for (std::size_t i = 0; i < axes.size(); ++i) shape[i] = model.shape[axes[i]];
        expected = gather(model, shape, [&](const Shape& index, Shape& from) {
          for (std::size_t i = 0; i < axes.size(); ++i) from[axes[i]] = index[i];
        });
      }
      result = apply("permute(" + shape_text(model.shape) + ", " + shape_text(order) + ")", expected,
                     [&] { return veil::permute(x, order); });
      break;
    }
    case 4:
    case 5: {  // slice (Python bounds) / narrow (exact bounds)
      const bool is_narrow = in.ConsumeBool();
      const Index dim = dim_arg(rank);
      const Index a = in.ConsumeIntegralInRange<Index>(-12, 12), b = in.ConsumeIntegralInRange<Index>(-12, 12);
      const Index step = is_narrow ? 1 : in.ConsumeIntegralInRange<Index>(-1, 4);
      const auto w = rank == 0 ? std::nullopt : wrapped(dim, rank);  // neither applies to a 0-d tensor
      if (w) {
        const Index extent = model.shape[*w];
        Index start = a, end = b;
        bool valid = true;
        if (is_narrow) {
          valid = a >= 0 && b >= 0 && a + b <= extent;
          end = a + b;
        } else {
          valid = step > 0;
          if (start < 0) start += extent;
          if (end < 0) end += extent;
          start = std::clamp<Index>(start, 0, extent);
          end = std::clamp<Index>(end, start, extent);
        }
        if (valid) {
          Shape shape = model.shape;
          shape[*w] = (end - start + step - 1) / step;
          expected = gather(model, shape, [&](const Shape& index, Shape& from) {
            from = index;
            from[*w] = start + index[*w] * step;
          });
        }
      }
      result = apply(veil::detail::concat(is_narrow ? "narrow(" : "slice(", shape_text(model.shape), ", dim ", dim, ", ", a, ", ",
                                          b, is_narrow ? "" : ", step ", is_narrow ? Index{0} : step, ")"),
                     expected, [&] { return is_narrow ? veil::narrow(x, dim, a, b) : veil::slice(x, dim, a, b, step); });
      break;
    }
    case 6: {  // expand: leading dims added, extents of 1 widened
      Shape target(static_cast<std::size_t>(in.ConsumeIntegralInRange<Index>(0, 2)));
      for (auto& extent : target) extent = in.ConsumeIntegralInRange<Index>(0, 4);
      for (Index extent : model.shape) {
        const int pick = in.ConsumeIntegralInRange(0, 7);
        target.push_back(pick == 0 ? in.ConsumeIntegralInRange<Index>(-2, 4) : extent == 1 && pick < 4 ? pick : extent);
      }
      bool valid = target.size() >= model.shape.size();
      for (Index extent : target) valid = valid && extent >= 0;
      const std::size_t lead = target.size() - std::min(target.size(), model.shape.size());
      for (std::size_t d = 0; valid && d < model.shape.size(); ++d)
        valid = model.shape[d] == target[lead + d] || model.shape[d] == 1;
      if (valid && count_of(target) <= 4 * max_elements)
        expected = gather(model, target, [&](const Shape& index, Shape& from) {
          for (std::size_t d = 0; d < from.size(); ++d) from[d] = model.shape[d] == 1 ? 0 : index[lead + d];
        });
      else if (valid)
        return false;  // valid but too large to check cheaply: skip the call
      result = apply("expand(" + shape_text(model.shape) + " -> " + shape_text(target) + ")", expected,
                     [&] { return veil::expand(x, target); });
      break;
    }
    case 7: {  // unsqueeze
      const Index dim = dim_arg(rank + 1);
      const auto w = wrapped(dim, rank + 1);
      if (w) {
        Shape shape = model.shape;
        shape.insert(shape.begin() + *w, 1);
        expected = Model{shape, model.values};
      }
      result = apply(veil::detail::concat("unsqueeze(", shape_text(model.shape), ", ", dim, ")"), expected,
                     [&] { return veil::unsqueeze(x, dim); });
      break;
    }
    case 8: {  // squeeze: the dimension must have extent 1; a 0-d tensor stays as it is
      const Index dim = dim_arg(rank);
      const auto w = wrapped(dim, rank);
      if (w && rank == 0) {
        expected = model;
      } else if (w && model.shape[*w] == 1) {
        Shape shape = model.shape;
        shape.erase(shape.begin() + *w);
        expected = Model{shape, model.values};
      }
      result = apply(veil::detail::concat("squeeze(", shape_text(model.shape), ", ", dim, ")"), expected,
                     [&] { return veil::squeeze(x, dim); });
      break;
    }
    default: {
      expected = model;
      result = apply("contiguous(" + shape_text(model.shape) + ")", expected, [&] { return veil::contiguous(x); });
      if (result) VEIL_FUZZ_CHECK(result->is_contiguous(), "contiguous() returned a non-contiguous tensor");
    }
  }
  if (!result) return false;
  x = *result;
  model = *expected;
  return true;
}

float add_op(float a, float b) { return a + b; }
float sub_op(float a, float b) { return a - b; }
float mul_op(float a, float b) { return a * b; }
float div_op(float a, float b) { return a / b; }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  veil::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Model model{draw_shape(in, 5), {}};
  for (Index e = 0; e < count_of(model.shape); ++e) model.values.push_back(static_cast<float>(e % 13) - 6.0f);
  Tensor<float> x = realise(model, in.ConsumeBool());
  veil_fuzz::input_description() = "start " + shape_text(model.shape);

  const int steps = in.ConsumeIntegralInRange(0, 6);
  for (int s = 0; s < steps; ++s) {
    if (!view_step(in, x, model)) continue;
    veil_fuzz::input_description() += " -> " + shape_text(model.shape);
  }

  // A second operand whose shape broadcasts with x's most of the time.
  Shape other;
  if (in.ConsumeIntegralInRange(0, 3) == 0) {
    other = draw_shape(in, 5);
  } else {
    for (Index extent : model.shape) {
      const int pick = in.ConsumeIntegralInRange(0, 3);
      if (pick == 0 && other.empty() && in.ConsumeBool()) continue;  // fewer leading dims
      other.push_back(pick == 1 ? 1 : extent);
    }
    if (in.ConsumeIntegralInRange(0, 3) == 0) other.insert(other.begin(), in.ConsumeIntegralInRange<Index>(1, 3));
  }
  if (count_of(other) > max_elements) return 0;
  Model y_model{other, {}};
  for (Index e = 0; e < count_of(other); ++e) y_model.values.push_back(static_cast<float>(e % 7) - 3.0f);  // has zeros
  const Tensor<float> y = realise(y_model, in.ConsumeBool());

  const std::optional<Shape> shape = broadcast(model.shape, other);
  try {
    const Shape got = veil::broadcast_shapes(model.shape, other);
    VEIL_FUZZ_CHECK(shape && got == *shape, "broadcast_shapes(", shape_text(model.shape), ", ", shape_text(other),
                    ") = ", shape_text(got));
  } catch (const veil::ShapeError&) {
    VEIL_FUZZ_CHECK(!shape, "broadcast_shapes(", shape_text(model.shape), ", ", shape_text(other), ") threw");
  }
  if (shape && count_of(*shape) > 4 * max_elements) return 0;

  const std::string pair = "(" + shape_text(model.shape) + ", " + shape_text(other) + ")";
  std::optional<Model> expected;
  if (shape) expected = binary(model, y_model, *shape, add_op);
  apply("add" + pair, expected, [&] { return x + y; });
  if (shape) expected = binary(model, y_model, *shape, sub_op);
  apply("sub" + pair, expected, [&] { return x - y; });
  if (shape) expected = binary(model, y_model, *shape, mul_op);
  apply("mul" + pair, expected, [&] { return x * y; });
  if (shape) expected = binary(model, y_model, *shape, div_op);
  apply("div" + pair, expected, [&] { return x / y; });

  // Gradients reduce back over the broadcast dimensions: d(a*b + a - b) = (b + 1) da + (a - 1) db.
  if (shape && in.ConsumeBool()) {
    Tensor<float> a = x.detach(), b = y.detach();
    a.set_requires_grad(true);
    b.set_requires_grad(true);
    const Tensor<float> z = a * b + a - b;
    Model upstream{*shape, {}};
    for (Index e = 0; e < count_of(*shape); ++e) upstream.values.push_back(static_cast<float>(e % 5) - 2.0f);
    z.backward(realise(upstream, in.ConsumeBool()));
    const Model one{{}, {1.0f}};
    const Model b_plus_1 = binary(y_model, one, y_model.shape, add_op);
    const Model a_minus_1 = binary(model, one, model.shape, sub_op);
    const Model grad_a = reduce_to(binary(upstream, b_plus_1, *shape, mul_op), model.shape);
    const Model grad_b = reduce_to(binary(upstream, a_minus_1, *shape, mul_op), other);
    const auto grad_or_zeros = [](const Tensor<float>& t) { return t.grad().defined() ? t.grad() : veil::zeros<float>(t.shape()); };
    // A sum may start from +0 or pass a -0 through unchanged: the sign of a zero gradient is free.
    check_equal(grad_or_zeros(a), grad_a, "grad of a in a*b + a - b " + pair, true);
    check_equal(grad_or_zeros(b), grad_b, "grad of b in a*b + a - b " + pair, true);
  }
  return 0;
}

// check_masked_inputs_unread: an executable test of the "cut edges" contract (DESIGN.md, Masks)
// for one concrete call.
//
// The contract says a masked edge takes no part in the forward or the backward, so whatever sits
// in a masked key, value or bias entry — NaN included — must change no output and no gradient.
// Comparing against a reference within a tolerance cannot prove that (a masked value multiplied
// by an exact 0 is invisible until it is NaN); poisoning it can. The check runs the attention
// forward and backward twice with the same upstream gradient: once on the inputs as given, once
// on copies where every masked entry is NaN, and requires every output and gradient to be
// bit-identical (memcmp), which also catches a masked entry that merely moves the rounding.
//
// What counts as masked (from mask::materialize, i.e. the mask's keep predicate):
//   * a key/value row j of batch row b and kv head g when no query i of any query head h in g's
//     group keeps (b, h, i, j) — a key kept by some query is legitimately read, masked elsewhere;
//   * an additive-bias entry when every edge (b, h, i, j) it is broadcast to is cut by the WHOLE
//     mask, except entries that are themselves -inf: those define the mask, and NaN would not.
// The query is never poisoned: a query row whose keys are all masked still yields output 0.
//
// Works for any mask, custom predicates included, so users with their own masks (or their own
// attention function: check_masked_inputs_unread_with) can run it on their shapes. It costs two
// forward/backward passes plus an O(B·H·Lq·Lk) materialised mask: a test tool, not a training step.
//
//   auto result = veil::attention::check_masked_inputs_unread(q, k, v, my_mask);
//   if (!result) std::cerr << result.message << "\n";
#pragma once

#include <cstring>
#include <iomanip>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "veil/attention/mask.hpp"
#include "veil/attention/options.hpp"
#include "veil/attention/scaled_dot_product.hpp"
#include "veil/autograd.hpp"

namespace veil::attention {

/// Outcome of a check: `passed`, and a message saying what was poisoned or what differed.
struct CheckResult {
  bool passed = false;
  std::string message;
  explicit operator bool() const { return passed; }
};

namespace detail {

/// Seed of the random upstream gradient: fixed, so a failing check reproduces exactly.
inline constexpr std::uint64_t check_gradient_seed = 0x7e11'5eedULL;

/// Turns history recording on for the guard's lifetime: the check needs a backward even when the
/// caller sits inside a NoGradGuard.
class EnableGradGuard {
 public:
  EnableGradGuard() : previous_(veil::detail::grad_mode_flag()) { veil::detail::grad_mode_flag() = true; }
  ~EnableGradGuard() { veil::detail::grad_mode_flag() = previous_; }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

/// Whether `clean` and `poisoned` hold the same bytes (memcmp over their elements in row-major
/// order; NaN equals NaN only with the same payload). `name` labels the tensor in the message.
/// Both undefined counts as equal (a gradient neither run produced).
template <class T>
CheckResult compare_bitwise(const std::string& name, const Tensor<T>& clean, const Tensor<T>& poisoned) {
  if (!clean.defined() || !poisoned.defined()) {
    const bool same = clean.defined() == poisoned.defined();
    return {same, same ? "" : name + " is defined in only one of the two runs"};
  }
  if (clean.shape() != poisoned.shape())
    return {false, veil::detail::concat(name, " has shape ", to_string(clean.shape()), " with the inputs as given but ",
                                        to_string(poisoned.shape()), " with masked entries set to NaN")};
  const Tensor<T> a = veil::detail::copy_contiguous(clean), b = veil::detail::copy_contiguous(poisoned);
  if (a.numel() == 0 || std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(T)) == 0)
    return {true, ""};
  Index first = 0, count = 0;
  for (Index e = a.numel(); e-- > 0;)
    if (std::memcmp(a.data() + e, b.data() + e, sizeof(T)) != 0) first = e, ++count;
  Shape index(a.shape().size());
  for (Index d = a.dim(), rest = first; d-- > 0;) index[d] = rest % a.shape()[d], rest /= a.shape()[d];
  std::ostringstream message;
  message << std::setprecision(std::numeric_limits<T>::max_digits10) << name << " " << to_string(a.shape())
          << " differs in " << count << " of " << a.numel() << " entries; first at " << to_string(index) << ": "
          << a.data()[first] << " with the inputs as given, " << b.data()[first]
          << " with masked entries set to NaN";
  return {false, message.str()};
}

/// `mask` with its additive biases of element type T replaced, in collect_additive's tree order.
template <class T>
mask::Mask replace_additive(const mask::Mask& m, const std::vector<Tensor<T>>& biases, std::size_t& next) {
  return std::visit(
      [&](const auto& s) -> mask::Mask {
        using S = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<S, mask::spec::Additive>) {
          if (!std::holds_alternative<Tensor<T>>(s.bias)) return m;
          return mask::Mask(mask::spec::Additive{biases[next++]});
        } else if constexpr (std::is_same_v<S, mask::spec::And> || std::is_same_v<S, mask::spec::Or>) {
          auto a = std::make_shared<const mask::Mask>(replace_additive<T>(*s.a, biases, next));
          auto b = std::make_shared<const mask::Mask>(replace_additive<T>(*s.b, biases, next));
          return mask::Mask(S{std::move(a), std::move(b)});
        } else {
          return m;
        }
      },
      m.spec());
}

/// [B, Hkv, Lk]: true where key j of (b, kv head g) is kept by no query of g's head group.
inline std::vector<bool> unread_keys(const Tensor<bool>& keep, const AttentionShape& s) {
  std::vector<bool> unread(static_cast<std::size_t>(s.batch * s.kv_heads * s.key_length), true);
  const bool* kept = keep.data();
  for (Index b = 0; b < s.batch; ++b)
    for (Index h = 0; h < s.heads; ++h)
      for (Index i = 0; i < s.query_length; ++i)
        for (Index j = 0; j < s.key_length; ++j)
          if (kept[((b * s.heads + h) * s.query_length + i) * s.key_length + j])
            unread[static_cast<std::size_t>((b * s.kv_heads + h / s.group()) * s.key_length + j)] = false;
  return unread;
}

/// NaN into rows j of a contiguous [B, Hkv, Lk, X] copy where `unread` says so; returns the count.
template <class T>
Index poison_rows(Tensor<T>& x, const std::vector<bool>& unread) {
  const Index width = x.size(3);
  Index poisoned = 0;
  for (std::size_t row = 0; row < unread.size(); ++row)
    if (unread[row]) {
      std::fill(x.data() + static_cast<Index>(row) * width, x.data() + static_cast<Index>(row + 1) * width,
                std::numeric_limits<T>::quiet_NaN());
      ++poisoned;
    }
  return poisoned;
}

/// NaN into the entries of a contiguous bias copy that serve only cut edges (and are not -inf,
/// which is what cuts them); a broadcast entry serves every (b, h, i, j) it is expanded to.
template <class T>
Index poison_bias(Tensor<T>& bias, const Tensor<bool>& keep, const AttentionShape& s) {
  const Shape full{s.batch, s.heads, s.query_length, s.key_length};
  Shape strides(4, 0);  // over [B, H, Lq, Lk]; 0 on broadcast (and missing leading) dims
  for (Index d = bias.dim() - 1, stride = 1; d >= 0; --d) {
    const Index target = 4 - bias.dim() + d;
    strides[target] = bias.size(d) == 1 ? 0 : stride;
    stride *= bias.size(d);
  }
  std::vector<bool> serves_kept(static_cast<std::size_t>(bias.numel()), false);
  const bool* kept = keep.data();
  for (Index b = 0, edge = 0; b < full[0]; ++b)
    for (Index h = 0; h < full[1]; ++h)
      for (Index i = 0; i < full[2]; ++i)
        for (Index j = 0; j < full[3]; ++j, ++edge)
          if (kept[edge]) serves_kept[b * strides[0] + h * strides[1] + i * strides[2] + j * strides[3]] = true;
  Index poisoned = 0;
  for (Index e = 0; e < bias.numel(); ++e)
    if (!serves_kept[static_cast<std::size_t>(e)] && bias.data()[e] != -std::numeric_limits<T>::infinity()) {
      bias.data()[e] = std::numeric_limits<T>::quiet_NaN();
      ++poisoned;
    }
  return poisoned;
}

/// One forward + backward: the output(s) and every gradient, in a fixed order with their names.
template <class T, class Attention>
std::vector<std::pair<std::string, Tensor<T>>> run_for_check(Attention& attention, const Tensor<T>& q,
                                                             const Tensor<T>& k, const Tensor<T>& v,
                                                             const mask::Mask& mask,
                                                             const std::vector<Tensor<T>>& biases,
                                                             const AttentionOptions& options) {
  // A private copy of the dropout generator: both runs must draw the same dropout pattern, and the
  // caller's generator is left where it was.
  AttentionOptions run_options = options;
  Generator dropout_generator = options.generator ? *options.generator : Generator();
  if (options.generator) run_options.generator = &dropout_generator;

  std::vector<std::pair<std::string, Tensor<T>>> results;
  Tensor<T> out;
  auto result = attention(q, k, v, mask, static_cast<const AttentionOptions&>(run_options));
  if constexpr (std::is_same_v<std::decay_t<decltype(result)>, AttentionResult<T>>) {
    out = result.output;
    results.emplace_back("output", out.detach());
    if (result.logsumexp.defined()) results.emplace_back("logsumexp", result.logsumexp.detach());
  } else {
    static_assert(std::is_same_v<std::decay_t<decltype(result)>, Tensor<T>>,
                  "check_masked_inputs_unread_with: the attention must return Tensor<T> or AttentionResult<T>");
    out = result;
    results.emplace_back("output", out.detach());
  }
  Generator gradient_generator(check_gradient_seed);
  if (out.requires_grad()) out.backward(randn<T>(out.shape(), gradient_generator));
  results.emplace_back("grad of q", q.grad());
  results.emplace_back("grad of k", k.grad());
  results.emplace_back("grad of v", v.grad());
  for (std::size_t b = 0; b < biases.size(); ++b)
    results.emplace_back("grad of additive bias " + std::to_string(b), biases[b].grad());
  return results;
}

}  // namespace detail

/// check_masked_inputs_unread with any attention function `attention(q, k, v, mask, options)`
/// returning Tensor<T> or AttentionResult<T>: the reference path, a module's core, or your own.
template <class T, class Attention>
CheckResult check_masked_inputs_unread_with(Attention attention, const Tensor<T>& q, const Tensor<T>& k,
                                            const Tensor<T>& v, const mask::Mask& mask = mask::none(),
                                            const AttentionOptions& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "check_masked_inputs_unread: T must be float or double");
  const AttentionShape s = detail::check_inputs(q, k, v, options);
  // The keep pattern validates the mask (MaskError) before any run.
  const Tensor<bool> keep = mask::materialize<T>(mask, s.batch, s.heads, s.query_length, s.key_length);
  const std::vector<bool> unread = detail::unread_keys(keep, s);
  std::vector<Tensor<T>> biases;
  mask::collect_additive<T>(mask, biases);

  detail::EnableGradGuard enable_grad;
  std::vector<std::pair<std::string, Tensor<T>>> runs[2];
  Index poisoned_rows = 0, poisoned_bias_entries = 0;
  for (int poisoned = 0; poisoned < 2; ++poisoned) {
    // Fresh leaves each run, so gradients do not accumulate across runs and the caller's tensors
    // (and their .grad) are untouched.
    Tensor<T> query = veil::detail::copy_contiguous(q), key = veil::detail::copy_contiguous(k),
              value = veil::detail::copy_contiguous(v);
    std::vector<Tensor<T>> bias_leaves;
    for (const auto& bias : biases) bias_leaves.push_back(veil::detail::copy_contiguous(bias));
    if (poisoned) {
      poisoned_rows = detail::poison_rows(key, unread);
      detail::poison_rows(value, unread);
      for (auto& bias : bias_leaves) poisoned_bias_entries += detail::poison_bias(bias, keep, s);
    }
    query.set_requires_grad(true), key.set_requires_grad(true), value.set_requires_grad(true);
    for (auto& bias : bias_leaves) bias.set_requires_grad(true);
    std::size_t next = 0;
    const mask::Mask run_mask = detail::replace_additive<T>(mask, bias_leaves, next);
    runs[poisoned] = detail::run_for_check(attention, query, key, value, run_mask, bias_leaves, options);
  }

  const std::string poisoned_summary =
      veil::detail::concat(poisoned_rows, " masked key/value row", poisoned_rows == 1 ? "" : "s", " and ",
                           poisoned_bias_entries, " masked bias entr", poisoned_bias_entries == 1 ? "y" : "ies");
  // Every differing tensor is named: which of output / dQ / dK / dV / dBias moved says where the
  // masked entry was read (the forward's P·V, the backward's dS·K, ...).
  std::string differences;
  for (std::size_t t = 0; t < runs[0].size(); ++t) {
    const CheckResult same = detail::compare_bitwise(runs[0][t].first, runs[0][t].second, runs[1][t].second);
    if (!same) differences += (differences.empty() ? "" : "; ") + same.message;
  }
  if (!differences.empty())
    return {false, veil::detail::concat("check_masked_inputs_unread: FAILED with ", poisoned_summary, " set to NaN: ",
                                        differences)};
  if (poisoned_rows == 0 && poisoned_bias_entries == 0)
    return {true, "check_masked_inputs_unread: passed vacuously: this mask leaves no key/value row and no bias "
                  "entry unread, so nothing was set to NaN"};
  return {true, veil::detail::concat("check_masked_inputs_unread: passed: outputs and gradients are bit-identical "
                                     "with ", poisoned_summary, " set to NaN")};
}

/// Runs the fused scaled_dot_product_attention forward and backward on (q, k, v, mask) as given
/// and with every masked key/value row and masked bias entry set to NaN, and reports whether the
/// output, logsumexp and the gradients of q, k, v and every additive bias are bit-identical.
/// Throws what the attention call would (ShapeError, MaskError, ValueError) for invalid inputs.
template <class T>
CheckResult check_masked_inputs_unread(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                       const mask::Mask& mask = mask::none(), const AttentionOptions& options = {}) {
  return check_masked_inputs_unread_with(
      [](const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value, const mask::Mask& m,
         const AttentionOptions& o) { return scaled_dot_product_attention_with_logsumexp(query, key, value, m, o); },
      q, k, v, mask, options);
}

}  // namespace veil::attention

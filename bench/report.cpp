// Turns one run of the benchmark programs (their Google Benchmark JSON files in one folder) into
// RESULTS.md — the speed targets with their measured ratios, then a table per area — and
// attention_vs_length.svg (forward+backward time against L per mask kind). Every figure is a
// median (or a single run where a case ran once) from that folder; every ratio divides two
// figures of the same run.
//
//   build/bench/report RESULTS_DIR      (bench/run calls it)
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Figure {
  double milliseconds = NAN;
  std::map<std::string, double> counters;
  std::string source;  // the JSON file it came from
  std::string error;   // a skipped case's reason
};

/// name -> figure, over every JSON file of the folder. For a case timed by several runs of the
/// same program under different settings (libtorch_bench with OPENBLAS_NUM_THREADS 1 and 2) the
/// fastest is kept: each side is shown at its best.
struct Results {
  std::map<std::string, Figure> figures;
  std::vector<std::string> order;         // names in the order the programs ran them
  std::map<std::string, json> contexts;  // file stem -> Google Benchmark context

  const Figure* find(const std::string& name) const {
    const auto found = figures.find(name);
    return found == figures.end() || std::isnan(found->second.milliseconds) ? nullptr : &found->second;
  }
  double ms(const std::string& name) const {
    const Figure* figure = find(name);
    return figure ? figure->milliseconds : NAN;
  }
  /// libtorch's time for an attention case: the faster of its composite and its SDPA.
  double libtorch_ms(const std::string& suffix, bool tuned) const {
    const std::string impl = tuned ? "attention/libtorch_tuned" : "attention/libtorch";
    const double composite = ms(impl + "/" + suffix), sdpa = ms(impl + "_sdpa/" + suffix);
    return std::isnan(composite) ? sdpa : std::isnan(sdpa) ? composite : std::min(composite, sdpa);
  }
  double counter(const std::string& name, const std::string& counter) const {
    const Figure* figure = find(name);
    if (!figure) return NAN;
    const auto found = figure->counters.find(counter);
    return found == figure->counters.end() ? NAN : found->second;
  }
};

double to_milliseconds(double value, const std::string& unit) {
  if (unit == "ns") return value * 1e-6;
  if (unit == "us") return value * 1e-3;
  if (unit == "s") return value * 1e3;
  return value;
}

/// The case name without Google Benchmark's decorations ("/real_time", "/iterations:2", "_median").
std::string strip_suffixes(std::string name) {
  for (bool stripped = true; stripped;) {
    stripped = false;
    for (const std::string suffix : {"_median", "/real_time", "/repeats:1", "/iterations:1", "/iterations:2"})
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        name.erase(name.size() - suffix.size());
        stripped = true;
      }
  }
  return name;
}

Results read_results(const fs::path& folder) {
  Results results;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    json document;
    try {
      std::ifstream(path) >> document;
    } catch (const json::exception& error) {
      std::cerr << "report: skipping " << path.filename() << ": " << error.what() << "\n";
      continue;
    }
    if (!document.contains("benchmarks")) continue;
    if (document.contains("context")) results.contexts[path.stem().string()] = document["context"];
    // With repetitions, only the median aggregate is used; a case run once has no aggregates.
    std::set<std::string> has_median;
    for (const auto& run : document["benchmarks"])
      if (run.value("aggregate_name", "") == "median") has_median.insert(run.value("run_name", ""));
    for (const auto& run : document["benchmarks"]) {
      const std::string run_name = run.value("run_name", run.value("name", ""));
      const bool median = run.value("aggregate_name", "") == "median";
      const bool single = run.value("run_type", "iteration") == "iteration" && !has_median.count(run_name);
      if (!median && !single) continue;
      Figure figure;
      figure.source = path.filename().string();
      if (run.value("error_occurred", false)) {
        figure.error = run.value("error_message", "skipped");
      } else {
        figure.milliseconds = to_milliseconds(run.value("real_time", NAN), run.value("time_unit", "ns"));
        for (const auto& [key, value] : run.items())
          if (value.is_number() && key != "real_time" && key != "cpu_time" && key != "iterations" &&
              key != "repetitions" && key != "repetition_index" && key != "threads" && key != "family_index" &&
              key != "per_family_instance_index")
            figure.counters[key] = value.get<double>();
      }
      std::string name = strip_suffixes(run_name);
      // libtorch-tuned_*.json: the same program under the tuned settings, kept apart by name.
      if (path.stem().string().rfind("libtorch-tuned", 0) == 0)
        if (const auto at = name.find("/libtorch"); at != std::string::npos) name.insert(at + 9, "_tuned");
      auto [slot, inserted] = results.figures.emplace(name, figure);
      if (inserted) results.order.push_back(name);
      if (!inserted && !std::isnan(figure.milliseconds) &&
          (std::isnan(slot->second.milliseconds) || figure.milliseconds < slot->second.milliseconds))
        slot->second = figure;
    }
  }
  return results;
}

std::string fixed(double value, int digits) {
  if (std::isnan(value)) return "—";
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

/// Milliseconds with about three significant digits.
std::string time_text(double ms) {
  if (std::isnan(ms)) return "—";
  if (ms >= 100) return fixed(ms, 0) + " ms";
  if (ms >= 10) return fixed(ms, 1) + " ms";
  if (ms >= 1) return fixed(ms, 2) + " ms";
  return fixed(ms * 1e3, 1) + " µs";
}

// ---- speed targets ------------------------------------------------------------------------------

struct Target {
  std::string what;      // the claim, in words
  std::string required;  // "≥ 0.55" ...
  std::function<double(const Results&)> measure;
  std::function<bool(double)> met;
  std::string unit;      // how the measured value is shown: "%", "×", "MB", ""
  std::string note;      // why, where a target is missed for a known reason
};

constexpr const char* kAttention = "B4xH8/L2048/D64";

std::string fused(const std::string& pass, const std::string& mask) {
  return "attention/fused/" + pass + "/" + mask + "/" + kAttention;
}

std::vector<Target> targets() {
  const auto ratio_to_none = [](std::string pass, std::string mask) {
    return [=](const Results& r) { return r.ms(fused(pass, mask)) / r.ms(fused(pass, "none")); };
  };
  const auto at_most = [](double limit) { return [=](double v) { return v <= limit; }; };
  const auto at_least = [](double limit) { return [=](double v) { return v >= limit; }; };
  const auto speedup = [](std::string slow, std::string fast) {
    return [=](const Results& r) { return r.ms(slow) / r.ms(fast); };
  };
  std::vector<Target> list;
  list.push_back({"fused forward, no mask, L = 2048: share of the SGEMM rate", "≥ 55%",
                  [](const Results& r) { return 100 * r.counter(fused("fwd", "none"), "sgemm_fraction"); },
                  at_least(55), "%", ""});
  list.push_back({"fused forward+backward, no mask: share of the SGEMM rate", "≥ 45%",
                  [](const Results& r) { return 100 * r.counter(fused("fwd_bwd", "none"), "sgemm_fraction"); },
                  at_least(45), "%", ""});
  for (const char* pass : {"fwd", "fwd_bwd"}) {
    const std::string p = pass;
    const std::string label = p == "fwd" ? "forward" : "forward+backward";
    list.push_back({"causal ÷ none, " + label, "≤ 0.55", ratio_to_none(p, "causal"), at_most(0.55), "", ""});
    list.push_back({"documents(4 equal) & causal ÷ none, " + label, "≤ 0.18", ratio_to_none(p, "documents_4&causal"),
                    at_most(0.18), "", ""});
    list.push_back({"key_padding 75% ÷ none, " + label, "≤ 0.80", ratio_to_none(p, "key_padding_75"), at_most(0.8), "", ""});
    list.push_back({"random 50% allow ÷ none, " + label, "≤ 1.15", ratio_to_none(p, "allow_random_50"), at_most(1.15),
                    "", ""});
  }
  list.push_back({"fused vs reference path, causal, forward+backward, L = 2048", "≥ 4×",
                  speedup("attention/reference/fwd_bwd/causal/" + std::string(kAttention), fused("fwd_bwd", "causal")),
                  at_least(4), "×", ""});
  list.push_back({"peak memory, fused causal forward+backward, B = 1, H = 8, L = 16384", "≤ 450 MB",
                  [](const Results& r) {
                    return r.counter("attention/fused/fwd_bwd/causal/B1xH8/L16384/D64", "peak_RSS_MB");
                  },
                  at_most(450), "MB", ""});
  list.push_back({"matmul 1024² vs Eigen's GEMM called directly (time ratio)", "≤ 1.10×",
                  speedup("BM_Matmul1024", "BM_EigenGemm1024"), at_most(1.1), "×", ""});
  list.push_back({"elementwise add of 16M floats: share of the memcpy bandwidth", "≥ 0.60",
                  [](const Results& r) {
                    return r.counter("BM_Add16M", "bytes_per_second") / r.counter("BM_Memcpy16M", "bytes_per_second");
                  },
                  at_least(0.6), "", ""});
  list.push_back({"autograd bookkeeping per op, forward+backward", "≤ 1000 ns",
                  [](const Results& r) { return 1e9 * r.counter("BM_AutogradChain", "time_per_op"); }, at_most(1000),
                  "ns", ""});
  list.push_back({"MultiHeadAttention module ÷ its projections + fused attention alone", "≤ 1.25",
                  speedup("mha/veil/fwd_bwd/causal/B8xL512xE512xH8", "mha/veil_parts/fwd_bwd/causal/B8xL512xE512xH8"),
                  at_most(1.25), "", ""});
  list.push_back({"nanoGPT CPU config, time per training iteration: PyTorch ÷ veil", "≥ 2.5×",
                  speedup("nanogpt/pytorch/cpu_config", "nanogpt/veil/cpu_config"), at_least(2.5), "×",
                  "a step of this 0.8M-parameter model is mostly GEMM time; see the README"});
  list.push_back({"nanoGPT GPU config, time per training iteration: PyTorch ÷ veil", "≥ 2×",
                  speedup("nanogpt/pytorch/gpu_config", "nanogpt/veil/gpu_config"), at_least(2), "×", ""});
  const auto versus_libtorch = [&](std::string mask, bool tuned) {
    return [=](const Results& r) {
      return r.libtorch_ms("fwd_bwd/" + mask + "/" + kAttention, tuned) / r.ms(fused("fwd_bwd", mask));
    };
  };
  for (bool tuned : {false, true}) {
    const std::string who = tuned ? "vs libtorch tuned (AVX-512 kernels, huge-page malloc)" : "vs libtorch";
    const std::string note = tuned ? "see the README: libtorch's dense path runs near the GEMM rate" : "";
    list.push_back({who + ", no mask, forward+backward, L = 2048", "≥ 2×", versus_libtorch("none", tuned), at_least(2),
                    "×", note});
    list.push_back({who + ", causal, forward+backward, L = 2048", "≥ 4×", versus_libtorch("causal", tuned), at_least(4),
                    "×", note});
    list.push_back({who + ", documents(8 equal) & causal, forward+backward, L = 2048", "≥ 10×",
                    versus_libtorch("documents_8&causal", tuned), at_least(10), "×", note});
  }
  list.push_back({"nanoGPT CPU config vs PyTorch tuned (AVX-512 kernels, huge-page malloc)", "≥ 2.5×",
                  speedup("nanogpt/pytorch_tuned/cpu_config", "nanogpt/veil/cpu_config"), at_least(2.5), "×",
                  "as above"});
  list.push_back({"nanoGPT GPU config vs PyTorch tuned", "≥ 2×",
                  speedup("nanogpt/pytorch_tuned/gpu_config", "nanogpt/veil/gpu_config"), at_least(2), "×", ""});
  return list;
}

std::string shown(double value, const std::string& unit) {
  if (std::isnan(value)) return "—";
  if (unit == "%") return fixed(value, 0) + "%";
  if (unit == "×") return fixed(value, 2) + "×";
  if (unit == "MB") return fixed(value, 0) + " MB";
  if (unit == "ns") return fixed(value, 0) + " ns";
  return fixed(value, 2);
}

// ---- the picture --------------------------------------------------------------------------------

/// Forward+backward time against L (log-log) for each mask kind of the B4xH8 D64 sweep: fused
/// solid, reference dashed, libtorch dotted.
void write_svg(const Results& results, const fs::path& path) {
  struct Series {
    std::string label, style;
    std::vector<std::pair<double, double>> points;  // (L, ms)
  };
  std::map<std::string, Series> series;
  for (const auto& [name, figure] : results.figures) {
    if (std::isnan(figure.milliseconds) || name.rfind("attention/", 0) != 0) continue;
    // attention/<impl>/fwd_bwd/<mask>/B4xH8/L<l>/D64
    std::vector<std::string> parts;
    std::stringstream in(name);
    for (std::string part; std::getline(in, part, '/');) parts.push_back(part);
    if (parts.size() != 7 || parts[2] != "fwd_bwd" || parts[4] != "B4xH8" || parts[6] != "D64" || parts[5][0] != 'L' ||
        parts[5][1] == 'q')
      continue;
    const std::string impl = parts[1];
    if (impl != "fused" && impl != "reference" && impl != "libtorch") continue;
    Series& s = series[impl + " " + parts[3]];
    s.label = impl + " " + parts[3];
    s.style = impl == "fused" ? "" : impl == "reference" ? "stroke-dasharray=\"6,4\"" : "stroke-dasharray=\"2,3\"";
    s.points.emplace_back(std::stod(parts[5].substr(1)), figure.milliseconds);
  }
  for (auto it = series.begin(); it != series.end();)  // a line needs two lengths
    it = it->second.points.size() < 2 ? series.erase(it) : std::next(it);
  double min_l = INFINITY, max_l = 0, min_ms = INFINITY, max_ms = 0;
  for (auto& [key, s] : series) {
    std::sort(s.points.begin(), s.points.end());
    for (auto [l, ms] : s.points)
      min_l = std::min(min_l, l), max_l = std::max(max_l, l), min_ms = std::min(min_ms, ms), max_ms = std::max(max_ms, ms);
  }
  const double width = 900, height = 560, left = 70, right = 290, top = 40, bottom = 50;
  std::ofstream svg(path);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << left << "\" y=\"24\" font-size=\"15\">Attention forward+backward, B = 4, H = 8, D = 64, fp32: "
         "time vs L (log-log)</text>\n";
  if (series.empty()) {
    svg << "</svg>\n";
    return;
  }
  min_ms = std::pow(10, std::floor(std::log10(min_ms))), max_ms = std::pow(10, std::ceil(std::log10(max_ms)));
  const auto x = [&](double l) {
    return left + (width - left - right) * (std::log2(l) - std::log2(min_l)) / std::max(1e-9, std::log2(max_l) - std::log2(min_l));
  };
  const auto y = [&](double ms) {
    return height - bottom - (height - top - bottom) * (std::log10(ms) - std::log10(min_ms)) / (std::log10(max_ms) - std::log10(min_ms));
  };
  for (double ms = min_ms; ms <= max_ms * 1.001; ms *= 10)
    svg << "<line x1=\"" << left << "\" x2=\"" << width - right << "\" y1=\"" << y(ms) << "\" y2=\"" << y(ms)
        << "\" stroke=\"#ddd\"/><text x=\"" << left - 8 << "\" y=\"" << y(ms) + 4 << "\" text-anchor=\"end\">"
        << time_text(ms) << "</text>\n";
  for (double l = min_l; l <= max_l * 1.001; l *= 2)
    svg << "<line x1=\"" << x(l) << "\" x2=\"" << x(l) << "\" y1=\"" << top << "\" y2=\"" << height - bottom
        << "\" stroke=\"#eee\"/><text x=\"" << x(l) << "\" y=\"" << height - bottom + 18 << "\" text-anchor=\"middle\">"
        << l << "</text>\n";
  svg << "<text x=\"" << (left + width - right) / 2 << "\" y=\"" << height - 12 << "\" text-anchor=\"middle\">L</text>\n";
  const char* const colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
                                 "#bcbd22", "#17becf"};
  std::map<std::string, std::string> colour_of_mask;
  int row = 0;
  for (const auto& [key, s] : series) {
    const std::string mask = key.substr(key.find(' ') + 1);
    if (!colour_of_mask.count(mask)) colour_of_mask[mask] = colours[colour_of_mask.size() % 10];
    const std::string& colour = colour_of_mask[mask];
    svg << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" " << s.style << " points=\"";
    for (auto [l, ms] : s.points) svg << x(l) << "," << y(ms) << " ";
    svg << "\"/>\n";
    const double ly = top + 16 * row++;
    svg << "<line x1=\"" << width - right + 15 << "\" x2=\"" << width - right + 45 << "\" y1=\"" << ly << "\" y2=\"" << ly
        << "\" stroke=\"" << colour << "\" stroke-width=\"2\" " << s.style << "/><text x=\"" << width - right + 50
        << "\" y=\"" << ly + 4 << "\">" << s.label << "</text>\n";
  }
  svg << "</svg>\n";
}

// ---- RESULTS.md ---------------------------------------------------------------------------------

std::string context_value(const Results& results, const std::string& stem, const std::string& key) {
  const auto found = results.contexts.find(stem);
  if (found == results.contexts.end() || !found->second.contains(key)) return "";
  const json& value = found->second[key];
  return value.is_string() ? value.get<std::string>() : value.dump();
}

void write_attention_table(std::ostream& md, const Results& results) {
  md << "| case | fused | reference | libtorch | libtorch tuned | fused ÷ reference | libtorch ÷ fused | "
        "fused % of SGEMM (kept pairs) | effective GFLOP/s | peak RSS fused / libtorch |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const std::string& name : results.order) {
    if (name.rfind("attention/fused/", 0) != 0) continue;
    const std::string suffix = name.substr(std::string("attention/fused/").size());
    const std::string reference = "attention/reference/" + suffix, libtorch = "attention/libtorch/" + suffix,
                      libtorch_memory = "attention_memory/libtorch/" + suffix;
    const double ms = results.ms(name), ref = results.ms(reference), torch = results.libtorch_ms(suffix, false),
                 tuned = results.libtorch_ms(suffix, true);
    std::string ref_text = time_text(ref), torch_text = time_text(torch);
    if (const auto it = results.figures.find(reference); it != results.figures.end() && !it->second.error.empty())
      ref_text = "skipped: " + it->second.error;
    if (const auto it = results.figures.find(libtorch); it != results.figures.end() && !it->second.error.empty())
      torch_text = "skipped: " + it->second.error;
    double torch_peak = results.counter(libtorch, "peak_RSS_MB");
    if (std::isnan(torch_peak)) torch_peak = results.counter(libtorch_memory, "peak_RSS_MB");
    if (std::isnan(torch) && !std::isnan(results.ms(libtorch_memory))) torch_text = time_text(results.ms(libtorch_memory));
    const double torch_ms = std::isnan(torch) ? results.ms(libtorch_memory) : torch;
    md << "| " << suffix << " | " << time_text(ms) << " | " << ref_text << " | " << torch_text << " | "
       << time_text(tuned) << " | "
       << (std::isnan(ref) ? "—" : fixed(ref / ms, 1) + "×") << " | "
       << (std::isnan(torch_ms) ? "—" : fixed(torch_ms / ms, 1) + "×") << " | "
       << fixed(100 * results.counter(name, "sgemm_fraction"), 0) << "% | "
       << fixed(results.counter(name, "effective_GFLOPs"), 0) << " | "
       << fixed(results.counter(name, "peak_RSS_MB"), 0) << " / " << (std::isnan(torch_peak) ? "—" : fixed(torch_peak, 0))
       << " MB |\n";
  }
}

void write_results(const Results& results, const fs::path& folder) {
  std::ofstream md(folder / "RESULTS.md");
  md << "# Benchmark results\n\n";
  md << "Written by `bench/report` from one run of `bench/run` (the JSON files next to this one are that run's raw "
        "output). Times are medians of the repetitions; every ratio divides two figures of this run.\n\n";
  md << "- machine: " << context_value(results, "attention", "host_name") << ", "
     << context_value(results, "attention", "num_cpus") << " CPUs at "
     << context_value(results, "attention", "mhz_per_cpu") << " MHz; " << context_value(results, "attention", "cpu_model")
     << "\n";
  md << "- veil: " << context_value(results, "attention", "compiler") << ", " << context_value(results, "attention", "flags")
     << ", " << context_value(results, "attention", "veil_threads") << " threads; grid "
     << context_value(results, "attention", "grid") << "; " << context_value(results, "attention", "date") << "\n";
  if (results.contexts.count("libtorch_openblas1") || results.contexts.count("libtorch_openblas2"))
    md << "- libtorch " << context_value(results, "libtorch_openblas1", "torch_version")
       << ": intra-op threads " << context_value(results, "libtorch_openblas1", "torch_threads")
       << ", OPENBLAS_CORETYPE=" << context_value(results, "libtorch_openblas1", "OPENBLAS_CORETYPE")
       << ", each case the faster of OPENBLAS_NUM_THREADS=1 and 2 and of its composite and SDPA; tuned: also "
          "ATEN_CPU_CAPABILITY=avx512 and GLIBC_TUNABLES=glibc.malloc.hugetlb=1\n";
  if (results.contexts.count("pytorch_nanogpt"))
    md << "- PyTorch (nanoGPT reference step): " << context_value(results, "pytorch_nanogpt", "settings") << "\n";
  md << "- SGEMM (Eigen, 1024³, same process as the attention cases): "
     << fixed(results.counter("sgemm/eigen/1024", "GFLOPs"), 0) << " GFLOP/s\n\n";

  md << "## Speed targets\n\n| target | required | measured | |\n|---|---|---|---|\n";
  for (const Target& target : targets()) {
    const double value = target.measure(results);
    const std::string status = std::isnan(value) ? "not measured in this run"
                               : target.met(value) ? "met"
                                                   : "**missed**" + (target.note.empty() ? "" : ": " + target.note);
    md << "| " << target.what << " | " << target.required << " | " << shown(value, target.unit) << " | " << status << " |\n";
  }
  md << "\n## Attention\n\nfp32; `fwd_bwd` is forward then backward of all of q, k, v. Reference: the mask "
        "materialised, matmul → softmax → matmul with autograd (veil's oracle path). libtorch: the same composite "
        "in libtorch with autograd or its `_scaled_dot_product_attention`, whichever is faster; tuned as above.\n\n";
  write_attention_table(md, results);
  md << "\n![time vs L](attention_vs_length.svg)\n";

  md << "\n## Ops\n\n| case | time | rate | ratio to its baseline |\n|---|---|---|---|\n";
  const double memcpy_rate = results.counter("BM_Memcpy16M", "bytes_per_second");
  const auto op_row = [&](const std::string& name, const std::string& what, const std::string& rate,
                          const std::string& ratio) {
    if (results.find(name)) md << "| " << what << " | " << time_text(results.ms(name)) << " | " << rate << " | " << ratio << " |\n";
  };
  op_row("BM_Matmul1024", "veil::matmul 1024³", fixed(results.counter("BM_Matmul1024", "flops") * 1e-9, 0) + " GFLOP/s",
         fixed(results.ms("BM_Matmul1024") / results.ms("BM_EigenGemm1024"), 2) + "× Eigen's time");
  op_row("BM_EigenGemm1024", "Eigen GEMM 1024³ (baseline)",
         fixed(results.counter("BM_EigenGemm1024", "flops") * 1e-9, 0) + " GFLOP/s", "1");
  for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
           {"BM_Add16M", "add, 16M floats (fresh output)"},
           {"BM_Memcpy16M", "memcpy 64 MB (baseline)"},
           {"BM_Softmax", "softmax [4096, 4096] fwd+bwd"},
           {"BM_LayerNorm", "layer_norm [8192, 768] fwd+bwd"},
           {"BM_CrossEntropy50257", "cross_entropy [1024, 50257] fwd+bwd"}})
    op_row(name, what, fixed(results.counter(name, "bytes_per_second") * 1e-9, 1) + " GB/s",
           fixed(results.counter(name, "bytes_per_second") / memcpy_rate, 2) + " of memcpy bandwidth");
  op_row("BM_AutogradChain", "autograd chain, 10,000 ops",
         fixed(results.counter("BM_AutogradChain", "time_per_op") * 1e9, 0) + " ns/op",
         fixed(results.counter("BM_AutogradChain", "time_per_op") / results.counter("BM_ChainNoGrad", "time_per_op"), 1) +
             "× the same chain without recording");

  md << "\n## Modules and training\n\n| case | veil | baseline | ratio |\n|---|---|---|---|\n";
  const std::string mha = "mha/veil/fwd_bwd/causal/B8xL512xE512xH8";
  if (results.find(mha)) {
    md << "| MultiHeadAttention fwd+bwd, B = 8, L = 512, E = 512, H = 8, causal | " << time_text(results.ms(mha))
       << " | its projections + fused attention alone: "
       << time_text(results.ms("mha/veil_parts/fwd_bwd/causal/B8xL512xE512xH8")) << " | "
       << fixed(results.ms(mha) / results.ms("mha/veil_parts/fwd_bwd/causal/B8xL512xE512xH8"), 2) << " |\n";
    for (const std::string impl : {"libtorch", "libtorch_tuned"})
      if (results.find("mha/" + impl + "/fwd_bwd/causal/B8xL512xE512xH8"))
        md << "| the same | " << time_text(results.ms(mha)) << " | torch::nn::MultiheadAttention"
           << (impl == "libtorch" ? "" : " (tuned)") << ": "
           << time_text(results.ms("mha/" + impl + "/fwd_bwd/causal/B8xL512xE512xH8")) << " | "
           << fixed(results.ms("mha/" + impl + "/fwd_bwd/causal/B8xL512xE512xH8") / results.ms(mha), 2)
           << "× faster |\n";
  }
  for (const std::string config : {"cpu_config", "gpu_config"})
    for (const std::string impl : {"pytorch", "pytorch_tuned"})
      if (results.find("nanogpt/veil/" + config))
        md << "| nanoGPT training iteration, " << (config == "cpu_config" ? "CPU config" : "GPU config") << " | "
           << time_text(results.ms("nanogpt/veil/" + config)) << " | PyTorch" << (impl == "pytorch" ? "" : " tuned")
           << ": " << time_text(results.ms("nanogpt/" + impl + "/" + config)) << " | "
           << fixed(results.ms("nanogpt/" + impl + "/" + config) / results.ms("nanogpt/veil/" + config), 2)
           << "× faster |\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: report RESULTS_DIR\n";
    return 2;
  }
  const fs::path folder = argv[1];
  const Results results = read_results(folder);
  if (results.figures.empty()) {
    std::cerr << "report: no benchmark results in " << folder << "\n";
    return 1;
  }
  write_results(results, folder);
  write_svg(results, folder / "attention_vs_length.svg");
  std::cout << "report: wrote " << (folder / "RESULTS.md").string() << " and attention_vs_length.svg from "
            << results.figures.size() << " benchmark figures\n";
  return 0;
}

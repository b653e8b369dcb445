// A console reporter that also keeps each benchmark's median (or its only run) and, after the
// table, prints ratios between them: every speed claim is a ratio measured in one run.
#pragma once

#include <benchmark/benchmark.h>

#include <iomanip>
#include <map>
#include <ostream>
#include <string>

class MedianReporter : public benchmark::ConsoleReporter {
 public:
  struct Summary {
    double seconds = 0;  // real time per iteration
    bool median = false;
    std::map<std::string, double> counters;
  };

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      const bool single = run.run_type == Run::RT_Iteration && run.repetitions == 1;
      if (!median && !single) continue;
      Summary& summary = summaries_[run.run_name.function_name];
      summary.seconds = run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
      summary.median = median;
      for (const auto& [name, counter] : run.counters) summary.counters[name] = counter.value;
    }
  }

  void Finalize() override {
    std::ostream& out = GetOutputStream();
    out << "\nratios (" << (any_median() ? "medians" : "single runs") << ")\n" << std::fixed << std::setprecision(2);
    write_ratios(out);
    ConsoleReporter::Finalize();
  }

 protected:
  /// Prints this program's ratios; summaries are keyed by benchmark function name.
  virtual void write_ratios(std::ostream& out) = 0;
  bool has(const std::string& name) const { return summaries_.count(name) != 0; }
  Summary& summary(const std::string& name) { return summaries_[name]; }

 private:
  bool any_median() const {
    for (const auto& [name, summary] : summaries_)
      if (summary.median) return true;
    return false;
  }
  std::map<std::string, Summary> summaries_;
};

#include "manager/metrics.h"

#include <cstdio>

namespace berth::manager {
namespace {

// Seconds: TCG boots take several seconds, restores below one, warm starts a few ms.
constexpr double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
constexpr size_t kNumBounds = sizeof(kBounds) / sizeof(kBounds[0]);

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// Label values are escaped as the text format requires (\\, \", \n).
std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

}  // namespace

Metrics& Metrics::Global() {
  static Metrics* m = new Metrics;  // never destroyed: used by background threads up to exit
  return *m;
}

void Metrics::ObservePhase(const std::string& phase, double seconds) {
  std::lock_guard lock(mu_);
  Histogram& h = phases_[phase];
  if (h.buckets.empty()) h.buckets.assign(kNumBounds, 0);
  for (size_t i = 0; i < kNumBounds; ++i) {
    if (seconds <= kBounds[i]) ++h.buckets[i];
  }
  ++h.count;
  h.sum += seconds;
}

void Metrics::CountStart(const std::string& kind) {
  std::lock_guard lock(mu_);
  ++starts_[kind];
}

void Metrics::CountExecution(const std::string& state) {
  std::lock_guard lock(mu_);
  ++executions_[state];
}

void Metrics::SetPooledVms(const std::string& tenant, const std::string& function, int64_t count) {
  std::lock_guard lock(mu_);
  pooled_[{tenant, function}] = count;
}

void Metrics::RemovePool(const std::string& tenant, const std::string& function) {
  std::lock_guard lock(mu_);
  pooled_.erase({tenant, function});
}

std::string Metrics::RenderPrometheus() const {
  std::lock_guard lock(mu_);
  std::string out;
  out += "# HELP berth_execution_phase_seconds Duration of each phase of an execution.\n";
  out += "# TYPE berth_execution_phase_seconds histogram\n";
  for (const char* phase : {"queue", "prepare", "boot", "run", "cleanup", "total"}) {
    auto it = phases_.find(phase);
    Histogram empty;
    empty.buckets.assign(kNumBounds, 0);
    const Histogram& h = it == phases_.end() ? empty : it->second;
    const std::string label = std::string("phase=\"") + phase + "\"";
    for (size_t i = 0; i < kNumBounds; ++i) {
      out += "berth_execution_phase_seconds_bucket{" + label + ",le=\"" + Num(kBounds[i]) + "\"} " +
             std::to_string(h.buckets[i]) + "\n";
    }
    out += "berth_execution_phase_seconds_bucket{" + label + ",le=\"+Inf\"} " + std::to_string(h.count) + "\n";
    out += "berth_execution_phase_seconds_sum{" + label + "} " + Num(h.sum) + "\n";
    out += "berth_execution_phase_seconds_count{" + label + "} " + std::to_string(h.count) + "\n";
  }
  out += "# HELP berth_starts_total Executions started, by how their VM started.\n";
  out += "# TYPE berth_starts_total counter\n";
  for (const char* kind : {"cold", "template", "warm"}) {
    auto it = starts_.find(kind);
    out += std::string("berth_starts_total{kind=\"") + kind + "\"} " +
           std::to_string(it == starts_.end() ? 0 : it->second) + "\n";
  }
  out += "# HELP berth_executions_total Executions ended, by final state.\n";
  out += "# TYPE berth_executions_total counter\n";
  for (const auto& [state, n] : executions_) {
    out += "berth_executions_total{state=\"" + Escape(state) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP berth_pool_vms Idle VMs in the warm pool of a function.\n";
  out += "# TYPE berth_pool_vms gauge\n";
  for (const auto& [key, n] : pooled_) {
    out += "berth_pool_vms{tenant=\"" + Escape(key.first) + "\",function=\"" + Escape(key.second) + "\"} " +
           std::to_string(n) + "\n";
  }
  return out;
}

}  // namespace berth::manager

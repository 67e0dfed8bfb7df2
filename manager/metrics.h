// Process-wide metrics of the manager, rendered in the Prometheus text
// exposition format 0.0.4 for GET /metrics. No dependency: a few counters,
// gauges and fixed-bucket histograms behind one mutex.
//
//   berth_execution_phase_seconds{phase="queue|prepare|boot|run|cleanup|total"}  histogram
//   berth_starts_total{kind="cold|template|warm"}                                 counter
//   berth_executions_total{state="succeeded|failed|..."}                          counter
//   berth_pool_vms{tenant,function}                                               gauge (idle pooled VMs)
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace berth::manager {

class Metrics {
 public:
  // The registry of this process.
  static Metrics& Global();

  void ObservePhase(const std::string& phase, double seconds);
  void CountStart(const std::string& kind);
  void CountExecution(const std::string& state);
  void SetPooledVms(const std::string& tenant, const std::string& function, int64_t count);
  void RemovePool(const std::string& tenant, const std::string& function);

  // Everything, in text format 0.0.4.
  std::string RenderPrometheus() const;

 private:
  struct Histogram {
    std::vector<uint64_t> buckets;  // cumulative counts per bound of kBounds
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, Histogram> phases_;
  std::map<std::string, uint64_t> starts_;
  std::map<std::string, uint64_t> executions_;
  std::map<std::pair<std::string, std::string>, int64_t> pooled_;
};

}  // namespace berth::manager

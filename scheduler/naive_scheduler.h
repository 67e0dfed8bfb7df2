// NaiveScheduler: the straightforward scheduler, kept as the baseline for
// benchmarks and as the reference answer in tests. Every Place() looks at
// every node (std::map in name order) with the same filters and score as
// Scheduler (fit.h), so it returns what Scheduler returns with sample_k = 0.
// Same contract and error codes as Scheduler; thread-safe (one mutex).
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "scheduler/fit.h"
#include "scheduler/types.h"

namespace berth::sched {

class NaiveScheduler {
 public:
  // policy.sample_k and sample_rounds are ignored; `seed` is accepted for
  // symmetry with Scheduler and unused.
  explicit NaiveScheduler(Policy policy, uint64_t seed = 1);

  Status UpsertNode(const NodeResources& node);
  Result<std::vector<std::string>> RemoveNode(const std::string& name);
  Status SetNodeState(const std::string& name, NodeState state);
  Result<Placement> Place(const PlacementRequest& request);
  Status Release(const std::string& claim_id);
  Status ClaimOn(const std::string& node, const std::string& claim_id, const Resources& resources);
  Result<ClaimInfo> FindClaim(const std::string& claim_id) const;
  Result<NodeReport> Report(const std::string& node) const;
  std::vector<NodeReport> Reports() const;
  size_t node_count() const;
  size_t claim_count() const;
  const Policy& policy() const { return policy_; }

 private:
  const Policy policy_;
  mutable std::mutex mu_;
  std::map<std::string, NodeLoad> nodes_;
  std::unordered_map<std::string, ClaimInfo> claims_;
};

}  // namespace berth::sched

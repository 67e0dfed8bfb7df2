// The filters and the score both schedulers use, so that Scheduler (sampling)
// and NaiveScheduler (full scan) rank nodes identically.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "scheduler/types.h"

namespace berth::sched {

// Why a node cannot take a request; kFits when it can. The order is the
// order in which the filters run: a node is counted under the first one it fails.
enum class Rejection {
  kFits = 0,
  kDown,
  kCordoned,
  kDraining,
  kLabels,
  kAccel,
  kCpuModel,
  kVcpus,
  kMemory,
  kDisk,
  kCount,
};

// What a scheduler keeps per node.
struct NodeLoad {
  NodeResources spec;
  Resources capacity;   // CapacityOf(spec)
  Resources allocated;  // sum of live claims
  uint64_t claims = 0;
};

// a += b; a -= b (saturating at 0).
void AddTo(Resources& a, const Resources& b);
void SubtractFrom(Resources& a, const Resources& b);

// Capacity minus allocation, 0 where a claim re-installed by ClaimOn overshoots.
Resources FreeOf(const NodeLoad& node);

// The disk `request` needs on `node`: disk_bytes, plus image_bytes when the
// node does not cache the request's image yet.
uint64_t DiskNeeded(const NodeLoad& node, const PlacementRequest& request);

Rejection CheckFit(const NodeLoad& node, const PlacementRequest& request);

// Higher is better; only meaningful for nodes where CheckFit gave kFits.
double Score(const NodeLoad& node, const PlacementRequest& request, const Policy& policy);

NodeReport MakeReport(const NodeLoad& node);

// Counts rejections per filter and words the ResourceExhausted error.
class RejectionTally {
 public:
  void Add(Rejection r) { ++counts_[static_cast<size_t>(r)]; }
  // "no node fits claim 'c' (4 vCPU, 2048 MiB, 0 B disk) among 12 nodes:
  //  3 down, 7 lack memory, 2 fail label selector"
  Status Error(const PlacementRequest& request, size_t nodes) const;

 private:
  std::array<size_t, static_cast<size_t>(Rejection::kCount)> counts_{};
};

// The best `limit` candidates by (score desc, name asc): the node names break
// ties, so the answer does not depend on the order nodes were looked at.
template <typename T>
class TopCandidates {
 public:
  struct Entry {
    double score;
    const std::string* name;
    T item;
  };

  explicit TopCandidates(size_t limit) : limit_(limit) { best_.reserve(limit + 1); }

  void Offer(double score, const std::string& name, T item) {
    Entry e{score, &name, item};
    if (best_.size() == limit_ && !Better(e, best_.back())) return;
    auto pos = std::upper_bound(best_.begin(), best_.end(), e,
                                [](const Entry& a, const Entry& b) { return Better(a, b); });
    best_.insert(pos, e);
    if (best_.size() > limit_) best_.pop_back();
  }

  const std::vector<Entry>& best() const { return best_; }
  size_t size() const { return best_.size(); }

 private:
  static bool Better(const Entry& a, const Entry& b) {
    if (a.score != b.score) return a.score > b.score;
    return *a.name < *b.name;
  }

  size_t limit_;
  std::vector<Entry> best_;
};

}  // namespace berth::sched

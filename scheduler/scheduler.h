// Scheduler: picks a node for each claim (vCPUs, memory, disk) and records the
// claim there, all in memory. The manager persists claims in its own store,
// feeds nodes in (UpsertNode / SetNodeState) and re-installs its claims after
// a restart (ClaimOn).
//
// Place() filters nodes (state up; free vCPUs, memory and disk after the
// claims already recorded, including ones still in flight; label selector;
// accel; cpu model), scores the feasible ones (fit.h: binpack or spread load
// plus image/template locality bonuses) and records the claim on the best
// one, atomically with the choice.
//
// With Policy::sample_k = K > 0 it uses power-of-K-choices: it scores K
// random nodes drawn from an index of up nodes (more rounds of K while it has
// fewer feasible nodes than 1 + alternates, at most Policy::sample_rounds),
// and falls back to a full scan when no sampled node fits, so a request fails
// only when no node at all can take it. A request with a label selector
// samples only nodes carrying the rarest of its labels (one index per
// key=value). A candidate set of at most 2K nodes is scanned in full. With
// K = 0 it gives the same answers as NaiveScheduler.
//
// All methods are thread-safe (one mutex; Place is O(K) when sampling).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "scheduler/fit.h"
#include "scheduler/types.h"

namespace berth::sched {

class Scheduler {
 public:
  // `seed` drives the node sampling; the same seed and calls give the same answers.
  explicit Scheduler(Policy policy, uint64_t seed = 1);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Adds a node or replaces its description (state, capacity, labels, caches),
  // keeping its claims. InvalidArgument when ValidateNode fails.
  Status UpsertNode(const NodeResources& node);
  // Forgets a node and its claims; returns the ids of the claims dropped.
  // NotFound for an unknown node.
  Result<std::vector<std::string>> RemoveNode(const std::string& name);
  // NotFound for an unknown node.
  Status SetNodeState(const std::string& name, NodeState state);

  // Chooses a node and records the claim on it. InvalidArgument when
  // ValidateRequest fails, AlreadyExists for a live claim id, and
  // ResourceExhausted when no node fits, naming how many nodes each filter
  // eliminated ("no node fits claim 'c' (...) among 12 nodes: 3 down,
  // 7 lack memory, 2 fail label selector").
  Result<Placement> Place(const PlacementRequest& request);
  // Frees a claim. NotFound for an unknown claim id.
  Status Release(const std::string& claim_id);
  // Records a claim on a given node without any filter (reconciliation after
  // a restart: the VM exists, so the claim must count even over capacity or
  // on a node that is not up). NotFound for an unknown node, AlreadyExists
  // for a live claim id, InvalidArgument for an empty claim id.
  Status ClaimOn(const std::string& node, const std::string& claim_id, const Resources& resources);

  // NotFound for an unknown claim id.
  Result<ClaimInfo> FindClaim(const std::string& claim_id) const;
  // NotFound for an unknown node.
  Result<NodeReport> Report(const std::string& node) const;
  // Every node, sorted by name.
  std::vector<NodeReport> Reports() const;
  size_t node_count() const;
  size_t claim_count() const;
  const Policy& policy() const { return policy_; }

  // How placements were decided, for benchmarks and metrics.
  struct Stats {
    uint64_t placements = 0;   // successful Place calls
    uint64_t failures = 0;     // ResourceExhausted answers
    uint64_t sampled = 0;      // placements decided from samples alone
    uint64_t full_scans = 0;   // full scans (small cluster, K = 0, or fallback)
  };
  Stats stats() const;

 private:
  struct Node;
  // A set of up nodes to sample from, with O(1) insert and removal.
  struct CandidateIndex {
    std::vector<Node*> nodes;
  };
  struct Node : NodeLoad {
    size_t all_pos = 0;  // index in nodes_
    // The candidate indexes this node is in, with its position in each:
    // empty unless the node is up.
    std::vector<std::pair<CandidateIndex*, size_t>> memberships;
    uint64_t seen_epoch = 0;  // dedupes samples within one Place
  };
  struct Claim {
    Node* node;
    Resources resources;
  };
  // What a full scan looks at first, packed so 10k nodes stay in cache:
  // hot_[i] mirrors nodes_[i].
  struct HotNode {
    Resources free;
    bool up = false;
  };

  static std::string LabelKey(const std::string& key, const std::string& value);
  static void Insert(CandidateIndex* index, Node* n);
  // Puts an up node into up_ and its label indexes; Unindex takes it out of all.
  void Index(Node* n);
  void Unindex(Node* n);
  uint64_t NextRandom();
  // The smallest index holding every node that can match the selector, or
  // nullptr when some selector pair matches no up node.
  const CandidateIndex* CandidatesFor(const PlacementRequest& request) const;
  void Sample(const PlacementRequest& request, const CandidateIndex& candidates, TopCandidates<Node*>& top);
  void Refresh(const Node* n);  // hot_[n->all_pos] from n
  // Every node; skips those that are not up or lack room using hot_ alone.
  void ScanFeasible(const PlacementRequest& request, TopCandidates<Node*>& top);
  // Runs every filter on every node (only when nothing fits, for the error message).
  void CountRejections(const PlacementRequest& request, RejectionTally& tally) const;

  const Policy policy_;
  mutable std::mutex mu_;
  uint64_t rng_state_;
  uint64_t epoch_ = 0;
  std::vector<std::unique_ptr<Node>> nodes_;   // every node; swap-removed
  std::vector<HotNode> hot_;
  std::unordered_map<std::string, Node*> by_name_;
  CandidateIndex up_;                          // every node in state up
  // "key\x1fvalue" -> the up nodes with that label (a selector samples from
  // its smallest index, so rare labels are found at once).
  std::unordered_map<std::string, CandidateIndex> label_index_;
  std::unordered_map<std::string, Claim> claims_;
  Stats stats_;
};

}  // namespace berth::sched
